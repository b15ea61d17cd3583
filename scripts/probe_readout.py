"""A decision readout fitted as a linear probe, written as a small LoRA on the LM head.

    python scripts/probe_readout.py --out runs/probe-readout [--window 1024] [--C 0]
        [--layers-rank 16 --first-layer 15]   # + zero-initialised LoRA on those layers, for SFT to go on
        [--model DIR --bos]                   # another base model (e.g. Gemma 3 270M, which needs <bos>)
        [--prompt NAME_OR_YAML]               # another prompt profile (train and serve with the same one)

The probe on the default model's own final hidden states (the issue-21 measurement) classifies
OpenAI Moderation about as well as TF-IDF, while LoRA SFT on the decision token did not get there
in the steps a CPU affords. This fits that probe exactly where the decision is read: logistic
regression on the final (normed) hidden state at the decision position of the training rows, then
an adapter whose LoRA on ``lm_head`` adds half of ``(w - d) . h + b`` to the "Unsafe" decision
tokens' logits and subtracts half from the "Safe" ones (d = the base model's own Unsafe - Safe
readout, b = the probe's intercept carried by a near-constant direction u of h, u . h ~ 1). The
two-label logit is then the probe's logit. A second rank adds the same constant to every decision
token, so that they hold >= 99% of the probability on the training rows (the base model leaves about
half on other tokens there); no other token's logit changes. The result is an ordinary PEFT adapter folder:
`guardcal evaluate | calibrate | serve --adapter OUT` read it like any other.

With ``--layers-rank R`` the adapter also carries rank-R LoRA on every linear module of the decoder
layers from ``--first-layer`` up, initialised to zero (PEFT's B = 0), so it still computes exactly the
probe; `guardcal train --method sft --adapter OUT` then trains those layers (and the readout) from a
start that already classifies, instead of from the base model's readout.

Chooses the regularisation on the training rows by cross-validation; prints the probe's
calibration-split AUROC from the features (a check that the adapter reproduces it comes from
`guardcal evaluate --adapter OUT --dataset openai-moderation:calib`).
"""

from __future__ import annotations

import argparse
import dataclasses
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
            rows.append(h.float().numpy().copy())  # a copy: a view would keep the whole sequence's states alive
    return np.stack(rows)


def main() -> int:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score

    from guardcal.core.examples import SAFE, UNSAFE
    from guardcal.core.labels import LabelSpec
    from guardcal.core.profiles import load_profile
    from guardcal.core.prompt import PromptTemplate
    from guardcal.data.loaders import load_dataset
    from guardcal.models.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="default", help="base model: default, a local folder or a cached hub id")
    ap.add_argument(
        "--bos",
        action="store_true",
        help="put the tokenizer's BOS token first (prompts are tokenised without special tokens; Gemma needs <bos>)",
    )
    ap.add_argument("--prompt", default="default", help="prompt profile: a built-in name or a YAML file")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument(
        "--train-dataset",
        default="openai-moderation:train",
        help="rows the probe is fitted on (any guardcal dataset key, e.g. a scripts/build_request_mix.py mix)",
    )
    ap.add_argument("--C", type=float, default=0.0, help="inverse regularisation; 0 = chosen by 5-fold CV on train")
    ap.add_argument("--features", type=Path, help="features.npz of an earlier run: skip the forward passes")
    ap.add_argument("--layers-rank", type=int, default=0, help="add zero-init LoRA of this rank (0 = none)")
    ap.add_argument("--first-layer", type=int, default=15, help="the first decoder layer --layers-rank adapts")
    ap.add_argument("--layers-alpha", type=int, default=32, help="LoRA alpha of the layer modules")
    args = ap.parse_args()
    t0 = time.time()
    loaded = load_model(args.model, None, dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    profile = load_profile(args.prompt)
    if args.bos:  # the default prompt with <bos> written first, as the ShieldGemma profile does
        profile = dataclasses.replace(profile, name=f"{profile.name}+bos", bos=tok.bos_token)
    template = PromptTemplate(mode="direct", profile=profile)
    spec = LabelSpec.from_tokenizer(tok)
    train = load_dataset(args.train_dataset)
    calib = load_dataset("openai-moderation:calib")
    ytr = np.array([e.label == UNSAFE for e in train], dtype=int)
    yca = np.array([e.label == UNSAFE for e in calib], dtype=int)
    ids = [e.id for e in train] + [e.id for e in calib]
    if args.features is not None:  # the hidden states of an earlier run (same model, prompt and window)
        cached = np.load(args.features)
        if [str(i) for i in cached["ids"]] != ids or int(cached["window"]) != args.window:
            raise SystemExit(f"{args.features}: other rows or window than this run; drop --features")
        if str(cached.get("model", "default")) != args.model or bool(cached.get("bos", False)) != args.bos:
            raise SystemExit(f"{args.features}: another model or BOS setting than this run; drop --features")
        if str(cached.get("prompt", "default")) != args.prompt:
            raise SystemExit(f"{args.features}: another prompt profile than this run; drop --features")
        xtr, xca = cached["train"], cached["calib"]
    else:
        xtr = features(model, tok, template, [e.text for e in train], args.window)
        xca = features(model, tok, template, [e.text for e in calib], args.window)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / "features.npz",
        train=xtr,
        calib=xca,
        ids=np.array(ids),
        window=args.window,
        model=args.model,
        bos=args.bos,
        prompt=args.prompt,
    )

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
    boost = label_mass_boost(xtr, head, a, spec)
    result = {
        "C": best_c,
        "cv_auroc_train": cv,
        "calib_auroc_probe": calib_auroc,
        "calib_auroc_realised": float(roc_auc_score(yca, realised)),
        "calib_accuracy_realised": float(np.mean((realised > 0) == yca)),
        "u_dot_h_train": [float(np.mean(xtr @ u)), float(np.std(xtr @ u))],
        "label_mass_boost": boost,
        "window": args.window,
        "train_dataset": args.train_dataset,
        "model": args.model,
        "bos": args.bos,
        "prompt": args.prompt,
        "layers_lora": {"rank": args.layers_rank, "alpha": args.layers_alpha, "first_layer": args.first_layer}
        if args.layers_rank
        else None,
        "seconds": round(time.time() - t0, 1),
    }
    layers = (args.layers_rank, args.layers_alpha, args.first_layer) if args.layers_rank else None
    write_adapter(model, args.out, a, (u, boost), spec, unsafe=UNSAFE, safe=SAFE, layers=layers)
    (args.out / "probe_readout.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _lr(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, class_weight="balanced")


def label_mass_boost(x: np.ndarray, head: np.ndarray, a: np.ndarray, spec) -> float:
    """The logit c added to every decision token so they hold >= 99% of the probability on ``x``'s rows.

    The readout moves Unsafe against Safe only; the base model leaves about half of the mass on other
    tokens at the decision position, so its full-vocabulary confidence (the paper's) would understate
    every answer. Adding the same c to all label tokens changes no two-label probability.
    """
    from scipy.special import logsumexp

    label = np.zeros(head.shape[0], dtype=bool)
    label[list(spec.all_ids)] = True
    z = x @ head.T
    from guardcal.core.examples import SAFE, UNSAFE

    unsafe, safe = list(spec.ids_for(UNSAFE)), list(spec.ids_for(SAFE))
    z[:, unsafe] += 0.5 * (x @ a)[:, None]
    z[:, safe] -= 0.5 * (x @ a)[:, None]
    need = np.log(99.0) + logsumexp(z[:, ~label], axis=1) - logsumexp(z[:, label], axis=1)
    return float(max(0.0, np.max(need)) + 1.0)


def write_adapter(model, out: Path, a: np.ndarray, boost, spec, *, unsafe: str, safe: str, layers=None) -> None:
    """The readout as rank-2 LoRA on ``lm_head``; ``layers`` = (rank, alpha, first) adds zero-init layer LoRA.

    Rank 1 (A = a, B = +-0.5 on the Unsafe / Safe tokens) is the probe; rank 2 (A = u, B = c on every
    decision token, with u . h ~ 1) is the label-mass boost ``boost`` = (u, c).
    """
    from peft import LoraConfig, get_peft_model

    if layers is None:
        cfg = LoraConfig(r=2, lora_alpha=2, lora_dropout=0.0, target_modules=["lm_head"], task_type="CAUSAL_LM")
    else:
        from guardcal.train.config import ALL_LINEAR
        from guardcal.train.runner import lora_layers

        rank, alpha, first = layers
        picked = "|".join(map(str, lora_layers(model, first) or range(model.config.num_hidden_layers)))
        linear = "|".join(ALL_LINEAR)
        cfg = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=0.0,
            # a regex: layers_to_transform would drop lm_head (it has no layer index)
            target_modules=rf".*\.layers\.({picked})\..*\.({linear})|lm_head",
            rank_pattern={"lm_head": 2},
            alpha_pattern={"lm_head": 2},
            task_type="CAUSAL_LM",
        )
    peft_model = get_peft_model(model, cfg)
    layer = peft_model.base_model.model.lm_head
    with torch.no_grad():
        u, c = boost
        layer.lora_A["default"].weight.copy_(torch.tensor(np.stack([a, u]), dtype=torch.float32))
        bvec = torch.zeros_like(layer.lora_B["default"].weight)
        for i in spec.ids_for(unsafe):
            bvec[i] = torch.tensor([0.5, c])
        for i in spec.ids_for(safe):
            bvec[i] = torch.tensor([-0.5, c])
        layer.lora_B["default"].weight.copy_(bvec)
    out.mkdir(parents=True, exist_ok=True)
    # the LM head is tied to the embeddings: without this PEFT also saves the whole 49k x 576 matrix (113 MB)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)


if __name__ == "__main__":
    raise SystemExit(main())
