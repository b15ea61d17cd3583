"""A decision readout fitted as a linear probe, written as a rank-1 LoRA on the LM head.

    python scripts/probe_readout.py --out runs/probe-readout [--window 1024] [--C 0]

The probe on the default model's own final hidden states (the issue-21 measurement) classifies
OpenAI Moderation about as well as TF-IDF, while LoRA SFT on the decision token did not get there
in the steps a CPU affords. This fits that probe exactly where the decision is read: logistic
regression on the final (normed) hidden state at the decision position of the training rows, then
an adapter whose LoRA on ``lm_head`` adds ``(w - d) . h + b`` to the "Unsafe" decision tokens'
logits and subtracts it from the "Safe" ones (d = the base model's own Unsafe - Safe readout,
b = the probe's intercept carried by a near-constant direction of h). The two-label logit is then
the probe's logit; no other token's logit changes. The result is an ordinary PEFT adapter folder:
`guardcal evaluate | calibrate | serve --adapter OUT` read it like any other.

Chooses the regularisation on the training rows by cross-validation; prints the probe's
calibration-split AUROC from the features (a check that the adapter reproduces it comes from
`guardcal evaluate --adapter OUT --dataset openai-moderation:calib`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def features(model, tokenizer, template, texts, window: int) -> np.ndarray:
    from guardcal.core.windows import first_window

    rows = []
    decoder = model.get_decoder()
    with torch.inference_mode():
        for text in tqdm(texts, desc="hidden states", leave=False):
            ids = tokenizer.encode(template.render(first_window(text, tokenizer, window)), add_special_tokens=False)
            h = decoder(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            rows.append(h.float().numpy())
    return np.stack(rows)


def main() -> int:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score

    from guardcal.core.labels import LabelSpec
    from guardcal.core.prompt import PromptTemplate
    from guardcal.data.datasets import load_dataset
    from guardcal.models.loading import load_model
    from guardcal.types import SAFE, UNSAFE

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--C", type=float, default=0.0, help="inverse regularisation; 0 = chosen by 5-fold CV on train")
    args = ap.parse_args()
    t0 = time.time()
    loaded = load_model("default", None, dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    template = PromptTemplate(mode="direct")
    spec = LabelSpec.from_tokenizer(tok)
    train = load_dataset("openai-moderation:train")
    calib = load_dataset("openai-moderation:calib")
    xtr = features(model, tok, template, [e.text for e in train], args.window)
    ytr = np.array([e.label == UNSAFE for e in train], dtype=int)
    xca = features(model, tok, template, [e.text for e in calib], args.window)
    yca = np.array([e.label == UNSAFE for e in calib], dtype=int)

    grid = [args.C] if args.C else [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    cv = {c: float(np.mean(cross_val_score(_lr(c), xtr, ytr, cv=5, scoring="roc_auc"))) for c in grid}
    best_c = max(cv, key=cv.get)
    probe = _lr(best_c).fit(xtr, ytr)
    w, b = probe.coef_[0].astype(np.float64), float(probe.intercept_[0])
    calib_auroc = float(roc_auc_score(yca, xca @ w + b))

    # b carried by u with u . h ~ 1 on the training states (ridge least squares)
    ridge = np.vstack([xtr, 1e-2 * np.eye(xtr.shape[1])])
    u, *_ = np.linalg.lstsq(ridge, np.r_[np.ones(len(xtr)), np.zeros(xtr.shape[1])], rcond=None)
    head = model.get_output_embeddings().weight.detach().double().numpy()
    unsafe_id, safe_id = spec.ids_for(UNSAFE)[0], spec.ids_for(SAFE)[0]
    d = head[unsafe_id] - head[safe_id]
    a = w - d + b * u  # margin' = d.h + a.h = w.h + b (u.h ~ 1)

    def two_label_logit(x: np.ndarray) -> np.ndarray:  # what the scorer reads: variants' probabilities summed
        from scipy.special import logsumexp

        z = x @ head.T
        return logsumexp(z[:, list(spec.ids_for(UNSAFE))], axis=1) - logsumexp(z[:, list(spec.ids_for(SAFE))], axis=1)

    realised = two_label_logit(xca) + xca @ a
    result = {
        "C": best_c,
        "cv_auroc_train": cv,
        "calib_auroc_probe": calib_auroc,
        "calib_auroc_realised": float(roc_auc_score(yca, realised)),
        "calib_accuracy_realised": float(np.mean((realised > 0) == yca)),
        "u_dot_h_train": [float(np.mean(xtr @ u)), float(np.std(xtr @ u))],
        "window": args.window,
        "seconds": round(time.time() - t0, 1),
    }
    write_adapter(model, args.out, a, spec, unsafe=UNSAFE, safe=SAFE)
    (args.out / "probe_readout.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _lr(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, class_weight="balanced")


def write_adapter(model, out: Path, a: np.ndarray, spec, *, unsafe: str, safe: str) -> None:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=["lm_head"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    layer = peft_model.base_model.model.lm_head
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor(a, dtype=torch.float32)[None, :])
        bvec = torch.zeros_like(layer.lora_B["default"].weight)
        for i in spec.ids_for(unsafe):
            bvec[i, 0] = 0.5
        for i in spec.ids_for(safe):
            bvec[i, 0] = -0.5
        layer.lora_B["default"].weight.copy_(bvec)
    out.mkdir(parents=True, exist_ok=True)
    # the LM head is tied to the embeddings: without this PEFT also saves the whole 49k x 576 matrix (113 MB)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)


if __name__ == "__main__":
    raise SystemExit(main())
