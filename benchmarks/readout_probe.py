"""Where does the model hold what the guard needs? Linear probes on hidden states, calibration split only (issue 21).

    python benchmarks/readout_probe.py --out runs/readout-probe [--prompts default,echo] [--pools last,mean]
        [--layers 15,20,30] [--window 1024] [--adapter DIR] [--train-dataset KEY] [--also KEY]
        [--versus LABEL=PREDICTIONS_JSONL] [--reference LABEL=AUROC]

The guard reads its decision at one position, the last prompt token. A logistic-regression probe
(regularisation by 5-fold CV on the training rows) on the hidden states there, scored on the
calibration split, says how well that position can classify; the same probe on other readouts says
whether a different reading would do better:

* ``--prompts echo``: the default prompt with the input shown twice (``Input again:``). A causal
  model's input tokens see only what came before them; the second copy's tokens attend to the whole
  first copy (Springer et al. 2024, "Repetition improves language model embeddings", arXiv 2402.15449).
* ``--pools mean``: the mean of the hidden states over the input's own tokens (the quoted text)
  instead of the decision position.
* ``--pools mean_normed``: the same mean of each token's state after the model's final norm
  (``model.model.norm``), which is what a model truncated to that layer returns per token (e.g. a
  vLLM pooling model with ``num_hidden_layers`` overridden).

Layers are ``hidden_states`` indices (0 = the embeddings, the last = after the final norm, which is
what the decision token reads). Writes ``readout_probe.json``: AUROC and accuracy of each
(prompt, pool, layer) and paired-bootstrap intervals of each readout minus ``default/last`` at the
same layer, and ``readout_probe.png`` (AUROC by layer). The test split is never read. Hidden states
are cached in ``--out``, one file per prompt, keyed by each text's sha256.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ECHO = "{instruction} {rule}\n\nInput:\n{input}\n\nInput again:\n{input}\n\n"
POOLS = ("last", "mean", "mean_normed")


def features(model, tokenizer, template, texts, window: int, layers: list[int]) -> dict[str, np.ndarray]:
    """``{pool: [rows, len(layers), hidden]}``: each layer's hidden state at the decision position, its
    mean over the input's tokens, and that mean after the final norm (the last layer is already normed),
    read by the scorer's own code (``guardcal.scoring.pooled``), one forward per text."""
    from guardcal.core.pooled_head import input_span
    from guardcal.core.windows import first_window
    from guardcal.scoring.pooled import pooled_features

    readouts = [(pool, k) for pool in POOLS for k in layers]
    rows = []
    for text in tqdm(texts, desc="hidden states", leave=False):
        span = input_span(template, tokenizer, first_window(text, tokenizer, window))
        rows.append(pooled_features(model, [span], readouts)[0].reshape(len(POOLS), len(layers), -1))
    stacked = np.stack(rows)
    return {pool: stacked[:, j] for j, pool in enumerate(POOLS)}


def probe(xtr: np.ndarray, ytr: np.ndarray):  # type: ignore[no-untyped-def]
    """The CV-chosen C and the balanced logistic regression fitted with it on the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def lr(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced"))

    grid = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
    cv = {c: float(np.mean(cross_val_score(lr(c), xtr, ytr, cv=5, scoring="roc_auc"))) for c in grid}
    best = max(cv, key=cv.get)
    return best, lr(best).fit(xtr, ytr)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_features(out: Path, name: str, template, loaded, texts: list[str], window: int, layers: list[int]):
    """``{pool: [rows, layers, hidden]}`` of ``texts`` under one prompt. Rows already in ``out``'s cache
    for this prompt (same layers, window, dtype and pools) are read from it, keyed by the text's sha256;
    the rest are computed and added to it."""
    path = out / f"features_{name}.npz"
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    cache: dict[str, dict[str, np.ndarray]] = {}
    if path.exists():
        got = dict(np.load(path))  # each array read once: indexing an NpzFile reads the whole array again
        same = got["layers"].tolist() == layers and int(got["window"]) == window and set(POOLS) <= set(got)
        if same and str(got.get("dtype", "float32")) == dtype:
            cache = {sha: {pool: got[pool][k] for pool in POOLS} for k, sha in enumerate(got["sha"].tolist())}
    shas_of = [_sha(t) for t in texts]  # each text hashed once
    missing = sorted({sha: t for sha, t in zip(shas_of, texts, strict=True) if sha not in cache}.items())
    if missing:
        fresh = features(loaded.model, loaded.tokenizer, template, [t for _, t in missing], window, layers)
        cache |= {sha: {pool: fresh[pool][k] for pool in POOLS} for k, (sha, _) in enumerate(missing)}
        shas = list(cache)
        arrays = {pool: np.stack([cache[sha][pool] for sha in shas]) for pool in POOLS}
        np.savez(path, sha=np.array(shas), layers=np.array(layers), window=window, dtype=dtype, **arrays)
    return {pool: np.stack([cache[sha][pool] for sha in shas_of]) for pool in POOLS}


def plot(result: dict, path: Path, references: dict[str, float]) -> None:
    """Calib AUROC by layer, one line per (prompt, pool); ``references`` as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    series: dict[str, list[tuple[int, float]]] = {}
    for key, probe_result in result["probes"].items():
        name, layer = key.split("@")
        series.setdefault(name, []).append((int(layer), probe_result["calib_auroc"]))
    for name, points in series.items():
        ax.plot(*zip(*sorted(points), strict=True), marker="o", label=f"probe: {name}")
    for k, (label, value) in enumerate(references.items()):
        ax.axhline(value, linestyle="--", color=f"C{len(series) + k}", label=label)
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("calib AUROC (300 rows)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--adapter", default=None, help="an adapter folder, or none for the base model")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--dtype", default="float32", help="float32, or bfloat16 on a CPU with native bf16")
    ap.add_argument("--train-dataset", default="openai-moderation:train", help="rows the probes are fitted on")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        help="another dataset key each probe is also read on (e.g. a held-out request set); repeatable",
    )
    ap.add_argument("--layers", default="15,20,30", help="hidden_states indices (0 = embeddings, last = final norm)")
    ap.add_argument("--prompts", default="default,echo", help="default and/or echo")
    ap.add_argument("--pools", default="last", help="last (the decision position) and/or mean (the input's tokens)")
    ap.add_argument(
        "--versus",
        action="append",
        default=[],
        help="LABEL=PREDICTIONS_JSONL: a guardcal evaluate predictions file of the calibration rows; "
        "each readout minus it by paired bootstrap (repeatable)",
    )
    ap.add_argument(
        "--reference",
        action="append",
        default=[],
        help="LABEL=AUROC drawn as a line on the plot (e.g. a trained guard's calib AUROC); repeatable",
    )
    args = ap.parse_args()
    if not set(args.prompts.split(",")) <= {"default", "echo"} or "default" not in args.prompts.split(","):
        ap.error("--prompts: default, optionally with echo (e.g. default,echo)")
    if not set(args.pools.split(",")) <= set(POOLS) or "last" not in args.pools.split(","):
        ap.error("--pools: last, optionally with mean and/or mean_normed (e.g. last,mean)")
    return args


def intervals(scores: dict[str, np.ndarray], baseline, y: np.ndarray) -> dict[str, list[float]]:
    """95% paired-bootstrap interval of AUROC(readout) - AUROC(baseline(key)) for each readout."""
    from guardcal.calibrate.metrics import auroc, paired_bootstrap

    return {
        key: np.percentile(paired_bootstrap(auroc, baseline(key), s, y), [2.5, 97.5]).round(4).tolist()
        for key, s in scores.items()
    }


CALIB = "openai-moderation:calib"


def fit_probes(args: argparse.Namespace, loaded, texts, labels, layers: list[int]):  # type: ignore[no-untyped-def]
    """``({readout: its numbers}, {readout: its calibration scores})`` for every prompt, pool and layer."""
    from guardcal.calibrate.metrics import auroc
    from guardcal.core.profiles import default_profile
    from guardcal.core.prompt import PromptTemplate

    base = default_profile()
    known = {"default": base, "echo": dataclasses.replace(base, name="default+echo", template=ECHO)}
    probes, scores = {}, {}
    for name in args.prompts.split(","):
        template = PromptTemplate(mode="direct", profile=known[name])
        feats = {
            key: cached_features(args.out, name, template, loaded, t, args.window, layers) for key, t in texts.items()
        }
        for pool in args.pools.split(","):
            for j, k in enumerate(layers):
                c, fitted = probe(feats[args.train_dataset][pool][:, j], labels[args.train_dataset])
                read = {key: fitted.decision_function(f[pool][:, j]) for key, f in feats.items()}
                scores[f"{name}/{pool}@{k}"] = s = read[CALIB]
                probes[f"{name}/{pool}@{k}"] = {
                    "C": c,
                    "calib_auroc": auroc(s, labels[CALIB]),
                    "calib_accuracy": float(np.mean((s > 0) == labels[CALIB])),
                } | {f"{key}_auroc": auroc(read[key], labels[key]) for key in args.also}
    return probes, scores


def tfidf_reading(args: argparse.Namespace, texts, labels) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """TF-IDF + logistic regression fitted on the same rows, read on the same sets."""
    try:
        from .baselines import tfidf_logreg
    except ImportError:  # run as a script: python benchmarks/NAME.py
        from baselines import tfidf_logreg  # type: ignore[no-redef]
    from guardcal.calibrate.metrics import auroc

    tfidf = tfidf_logreg().fit(texts[args.train_dataset], labels[args.train_dataset])
    p = {key: tfidf.predict_proba(texts[key])[:, 1] for key in (CALIB, *args.also)}
    right = float(np.mean((p[CALIB] >= 0.5) == labels[CALIB]))
    return {"calib_auroc": auroc(p[CALIB], labels[CALIB]), "calib_accuracy": right} | {
        f"{key}_auroc": auroc(p[key], labels[key]) for key in args.also
    }


def main() -> int:
    from guardcal.calibrate.metrics import auroc
    from guardcal.core.examples import UNSAFE
    from guardcal.data.loaders import load_dataset
    from guardcal.models.loading import load_model

    args = parse_args()
    t0 = time.time()
    layers = [int(k) for k in args.layers.split(",")]
    loaded = load_model(args.model, args.adapter, dtype=args.dtype)
    loaded.model.eval()
    sets = {key: load_dataset(key) for key in (args.train_dataset, CALIB, *args.also)}
    texts = {key: [e.text for e in rows] for key, rows in sets.items()}
    labels = {key: np.array([e.label == UNSAFE for e in rows], dtype=int) for key, rows in sets.items()}
    yca = labels[CALIB]
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": args.model, "adapter": args.adapter, "window": args.window, "layers": layers}
    result |= {"dtype": args.dtype}
    result |= {"train_dataset": args.train_dataset}
    result["probes"], scores = fit_probes(args, loaded, texts, labels, layers)
    others = {key: s for key, s in scores.items() if not key.startswith("default/last@")}
    result["minus_default_last_auroc_ci95"] = intervals(
        others, lambda key: scores[f"default/last@{key.split('@')[1]}"], yca
    )
    for label, _, path in (spec.partition("=") for spec in args.versus):
        try:
            from .baselines import predicted_logits
        except ImportError:  # run as a script: python benchmarks/NAME.py
            from baselines import predicted_logits  # type: ignore[no-redef]
        other = predicted_logits(path, [e.id for e in sets[CALIB]], CALIB)
        result[f"minus_{label}_auroc_ci95"] = intervals(scores, lambda key, o=other: o, yca)
        result.setdefault("versus", {})[label] = {"file": path, "calib_auroc": auroc(other, yca)}
    result["tfidf_logreg"] = tfidf_reading(args, texts, labels)
    result["seconds"] = round(time.time() - t0, 1)
    (args.out / "readout_probe.json").write_text(json.dumps(result, indent=2) + "\n")
    references = {label: float(value) for label, _, value in (r.rpartition("=") for r in args.reference)}
    references["TF-IDF + LR, same rows"] = result["tfidf_logreg"]["calib_auroc"]
    plot(result, args.out / "readout_probe.png", references)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
