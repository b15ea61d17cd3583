"""Which pooled head to build? Probe variants on cached hidden states, scored by the choosing rule (issue 21).

    python benchmarks/pooled_head_search.py --features base=runs/probe-bf16/features_default.npz \\
        [--features v4=runs/probe-v4/features_default.npz] --train-dataset jsonl:runs/data-e/train_mix.jsonl \\
        --val-dataset jsonl:runs/data-e/requests_val.jsonl --versus v4=CALIB_PREDICTIONS,VAL_PREDICTIONS \\
        --out results/guard/candidates/pooled-head

``benchmarks/readout_probe.py`` writes the feature caches (one per model: ``{pool: [rows, layers,
hidden]}`` keyed by each text's sha256). This script fits one logistic-regression head per variant
on the training rows and reads it on the calibration split and on held-out requests. It never reads
the test split or XSTest.

A variant is a set of readouts (concatenated) and a row weighting:

* ``class``: classes balanced over all rows (``readout_probe``'s probe);
* ``domain``: each (domain, label) cell weighs the same in total, so the 500 OpenAI rows count as
  much as all the requests together;
* ``oai2``: as ``domain``, with the OpenAI cells counting twice.

The domain of a training row is OpenAI Moderation when its id starts with ``oai-``, else a request.
The regularisation is chosen by 5-fold CV (folds stratified by domain and label) on the rule itself:
the mean of the held-out folds' OpenAI AUROC and request AUROC. The rule (``contrast-mix``) is the
mean of calib AUROC and held-out-request AUROC, with a floor of 0.84 on calib. Intervals are 95%
paired bootstraps against each ``--versus`` guard (2,000 resamples per set; the rule mean's from
independent resamples of the two sets). Writes ``search.json`` and ``search.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIB = "openai-moderation:calib"
FLOOR = 0.84
WEIGHTINGS = ("class", "domain", "oai2")
MEANS = (("base", "mean", 10), ("base", "mean", 15), ("base", "mean", 20))
NORMED = (("base", "mean_normed", 10), ("base", "mean_normed", 15), ("base", "mean_normed", 20))
V4_MEANS = tuple(("v4", pool, layer) for _, pool, layer in MEANS)
#: (name, readouts as (features, pool, layer), weighting)
VARIANTS: tuple[tuple[str, tuple[tuple[str, str, int], ...], str], ...] = (
    ("base mean@15", (("base", "mean", 15),), "class"),
    ("base mean_normed@15", (("base", "mean_normed", 15),), "class"),
    ("base mean_normed@15, domain", (("base", "mean_normed", 15),), "domain"),
    ("base mean_normed@15, oai2", (("base", "mean_normed", 15),), "oai2"),
    ("base mean_normed@20, domain", (("base", "mean_normed", 20),), "domain"),
    ("base mean@15, domain", (("base", "mean", 15),), "domain"),
    ("base mean@10+15+20, domain", MEANS, "domain"),
    ("base mean@10+15+20, oai2", MEANS, "oai2"),
    ("base mean_normed@10+15+20, domain", NORMED, "domain"),
    ("base mean@15+last@30, domain", (("base", "mean", 15), ("base", "last", 30)), "domain"),
    ("base mean@10+15+20+last@30, domain", (*MEANS, ("base", "last", 30)), "domain"),
    ("v4 mean_normed@15, domain", (("v4", "mean_normed", 15),), "domain"),
    ("v4 last@30, domain", (("v4", "last", 30),), "domain"),
    ("v4 mean@10+15+20, domain", V4_MEANS, "domain"),
    ("v4 mean@10+15+20+last@30, domain", (*V4_MEANS, ("v4", "last", 30)), "domain"),
    ("v4 mean@10+15+20+last@30, oai2", (*V4_MEANS, ("v4", "last", 30)), "oai2"),
    ("v4 mean@10+15+20+last@30, class", (*V4_MEANS, ("v4", "last", 30)), "class"),
)


def row_weights(domain: np.ndarray, y: np.ndarray, weighting: str) -> np.ndarray:
    """Per-row weights, mean 1 (``guardcal.train.head.row_weights``): classes balanced (``class``), or every
    (domain, label) cell the same total (``domain``; ``oai2``: the OpenAI cells twice that)."""
    from guardcal.train.head import row_weights as weights

    return weights(None if weighting == "class" else domain, y, 2.0 if weighting == "oai2" else 1.0)


def head(c: float):  # type: ignore[no-untyped-def]
    """guardcal's head pipeline (``guardcal.train.head``): standardise, then logistic regression."""
    from guardcal.train.head import head_pipeline

    return head_pipeline(c)


def rule_cv(x: np.ndarray, y: np.ndarray, domain: np.ndarray, weighting: str, seed: int = 0) -> dict[float, float]:
    """For each C: the mean over 5 folds stratified by (domain, label) of (OpenAI AUROC + request AUROC) / 2
    on the held-out fold (``guardcal.train.head.cv_scores``, with this variant's weighting)."""
    from guardcal.train.head import cv_scores

    return cv_scores(x, y, domain, seed, 2.0 if weighting == "oai2" else 1.0, weigh_domains=weighting != "class")


def load_cache(path: Path) -> tuple[list[int], dict[str, dict[str, np.ndarray]]]:
    """The cache's layers and ``{sha: {pool: [layers, hidden]}}``."""
    got = dict(np.load(path))
    pools = [k for k in got if k not in ("sha", "layers", "window", "dtype")]
    return got["layers"].tolist(), {
        sha: {pool: got[pool][k] for pool in pools} for k, sha in enumerate(got["sha"].tolist())
    }


def readout_matrix(caches, readouts, shas: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Rows of ``shas``, the chosen (features, pool, layer) readouts side by side."""
    parts = []
    for name, pool, layer in readouts:
        layers, cache = caches[name]
        j = layers.index(layer)
        missing = [s for s in shas if s not in cache]
        if missing:
            raise SystemExit(
                f"{len(missing)} rows are not in the {name} feature cache; run readout_probe on them first"
            )
        parts.append(np.stack([cache[s][pool][j] for s in shas]))
    return np.concatenate(parts, axis=1).astype(np.float64)


def save_head(folder: Path, fitted, readouts, adapter: str | None, variant: str) -> None:  # type: ignore[no-untyped-def]
    """The fitted pipeline as ``core.pooled_head.PooledHead`` in ``folder``, beside a copy of ``adapter``'s LoRA."""
    import shutil

    from guardcal.core.pooled_head import FILENAME
    from guardcal.models.loading import check_adapter_dir
    from guardcal.train.head import to_head

    folder.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        source = check_adapter_dir(adapter)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(source / name, folder / name)
    to_head(fitted, tuple((pool, layer) for _, pool, layer in readouts)).save(folder / FILENAME)
    (folder / "head_fit.json").write_text(json.dumps({"variant": variant, "adapter": adapter}, indent=2) + "\n")


def plot(result: dict, path: Path) -> None:
    """Calib AUROC against held-out-request AUROC, one point per variant, the guards and TF-IDF marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, (name, v) in enumerate(result["variants"].items()):
        marker = "osD^v"[k // 10 % 5]  # ten colours a marker
        ax.scatter(v["calib_auroc"], v["val_auroc"], color=f"C{k % 10}", marker=marker, label=name, s=24)
    for name, v in result["versus"].items():
        ax.scatter(v["calib_auroc"], v["val_auroc"], marker="*", s=120, color="black")
        ax.annotate(name, (v["calib_auroc"], v["val_auroc"]), fontsize=8, xytext=(4, -10), textcoords="offset points")
    t = result["tfidf_logreg"]
    ax.scatter(t["calib_auroc"], t["val_auroc"], marker="x", color="grey")
    ax.annotate("TF-IDF", (t["calib_auroc"], t["val_auroc"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axvline(FLOOR, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("calib AUROC (300 OpenAI rows)")
    ax.set_ylabel("held-out requests AUROC (349)")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--features",
        action="append",
        required=True,
        help="NAME=features_default.npz[,ADAPTER]: a readout_probe cache and the adapter it was read with; repeatable",
    )
    ap.add_argument("--train-dataset", required=True)
    ap.add_argument("--val-dataset", required=True, help="held-out requests made to an assistant")
    ap.add_argument("--versus", action="append", default=[], help="LABEL=CALIB_PREDICTIONS,VAL_PREDICTIONS")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--save-head",
        action="append",
        default=[],
        help="VARIANT=DIR: write that variant's head as an adapter folder (its features' LoRA, if any, copied in)",
    )
    return ap.parse_args()


@dataclass
class Rows:
    """The three sets' examples, labels (1 = unsafe) and text hashes; the training rows' domain (1 = OpenAI)."""

    keys: tuple[str, str, str]  # train, calib, held-out requests
    sets: dict[str, list]
    y: dict[str, np.ndarray]
    shas: dict[str, list[str]]
    domain: np.ndarray

    @classmethod
    def load(cls, train: str, val: str) -> Rows:
        from guardcal.core.examples import UNSAFE
        from guardcal.data.loaders import load_dataset

        try:
            from .readout_probe import _sha
        except ImportError:  # run as a script: python benchmarks/NAME.py
            from readout_probe import _sha  # type: ignore[no-redef]

        sets = {key: load_dataset(key) for key in (train, CALIB, val)}
        y = {key: np.array([e.label == UNSAFE for e in rows], dtype=int) for key, rows in sets.items()}
        shas = {key: [_sha(e.text) for e in rows] for key, rows in sets.items()}
        domain = np.array([e.id.startswith("oai-") for e in sets[train]], dtype=int)
        return cls((train, CALIB, val), sets, y, shas, domain)


def versus_logits(specs: list[str], rows: Rows) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{label: (calib logits, held-out logits)}`` of each ``LABEL=CALIB_PREDICTIONS,VAL_PREDICTIONS``."""
    try:
        from .baselines import predicted_logits
    except ImportError:  # run as a script: python benchmarks/NAME.py
        from baselines import predicted_logits  # type: ignore[no-redef]
    _, calib, val = rows.keys
    out = {}
    for spec in specs:
        label, _, paths = spec.partition("=")
        calib_path, _, val_path = paths.partition(",")
        out[label] = (
            predicted_logits(calib_path, [e.id for e in rows.sets[calib]], calib),
            predicted_logits(val_path, [e.id for e in rows.sets[val]], None),
        )
    return out


def fit_variant(caches, readouts, weighting: str, rows: Rows, versus) -> tuple[dict, object]:  # type: ignore[no-untyped-def]
    """A variant's numbers (C, calib and held-out AUROC, rule mean, intervals against each guard) and its fit."""
    from guardcal.calibrate.metrics import auroc, paired_bootstrap

    xtr, xca, xva = (readout_matrix(caches, readouts, rows.shas[k]) for k in rows.keys)
    ytr, yca, yva = (rows.y[k] for k in rows.keys)
    cv = rule_cv(xtr, ytr, rows.domain, weighting)
    c = max(cv, key=cv.get)
    fitted = head(c).fit(xtr, ytr, logisticregression__sample_weight=row_weights(rows.domain, ytr, weighting))
    sca, sva = fitted.decision_function(xca), fitted.decision_function(xva)
    row = {"C": c, "cv_rule": round(cv[c], 4), "calib_auroc": auroc(sca, yca)}
    row |= {"calib_accuracy": float(np.mean((sca > 0) == yca)), "val_auroc": auroc(sva, yva)}
    row["rule"] = (row["calib_auroc"] + row["val_auroc"]) / 2
    row["above_floor"] = row["calib_auroc"] >= FLOOR
    for label, (vc, vv) in versus.items():
        dc = paired_bootstrap(auroc, vc, sca, yca, n_boot=2000, seed=0)
        dv = paired_bootstrap(auroc, vv, sva, yva, n_boot=2000, seed=1)
        row[f"minus_{label}_ci95"] = {
            "calib_auroc": np.percentile(dc, [2.5, 97.5]).round(4).tolist(),
            "val_auroc": np.percentile(dv, [2.5, 97.5]).round(4).tolist(),
            "rule": np.percentile((dc + dv) / 2, [2.5, 97.5]).round(4).tolist(),
        }
    return row, fitted


def tfidf_reading(rows: Rows) -> dict[str, float]:
    """TF-IDF + logistic regression fitted on the same training rows, read on calib and the held-out requests."""
    from guardcal.calibrate.metrics import auroc

    try:
        from .baselines import tfidf_logreg
    except ImportError:  # run as a script: python benchmarks/NAME.py
        from baselines import tfidf_logreg  # type: ignore[no-redef]

    train, calib, val = rows.keys
    tfidf = tfidf_logreg().fit([e.text for e in rows.sets[train]], rows.y[train])
    got = {
        f"{name}_auroc": auroc(tfidf.predict_proba([e.text for e in rows.sets[k]])[:, 1], rows.y[k])
        for name, k in (("calib", calib), ("val", val))
    }
    return got | {"rule": (got["calib_auroc"] + got["val_auroc"]) / 2}


def main() -> int:
    from guardcal.calibrate.metrics import auroc

    args = parse_args()
    t0 = time.time()
    sources = {name: spec.partition(",") for name, _, spec in (f.partition("=") for f in args.features)}
    caches = {name: load_cache(Path(npz)) for name, (npz, _, _) in sources.items()}
    heads = dict(spec.partition("=")[::2] for spec in args.save_head)
    rows = Rows.load(args.train_dataset, args.val_dataset)
    versus = versus_logits(args.versus, rows)
    result: dict = {"train_dataset": args.train_dataset, "val_dataset": args.val_dataset, "floor": FLOOR}
    result["train_rows"] = {"openai": int(rows.domain.sum()), "requests": int((1 - rows.domain).sum())}
    yca, yva = rows.y[CALIB], rows.y[args.val_dataset]
    result["versus"] = {
        label: {"calib_auroc": auroc(c, yca), "val_auroc": auroc(v, yva), "rule": (auroc(c, yca) + auroc(v, yva)) / 2}
        for label, (c, v) in versus.items()
    }
    result["variants"] = {}
    for name, readouts, weighting in VARIANTS:
        if any(r[0] not in caches for r in readouts):
            continue
        row, fitted = fit_variant(caches, readouts, weighting, rows, versus)
        result["variants"][name] = row
        if name in heads:
            adapters = {sources[r[0]][2] or None for r in readouts}
            if len(adapters) != 1:
                raise SystemExit(
                    f"{name}: a head reads one model; its readouts come from {sorted(map(str, adapters))}"
                )
            save_head(Path(heads[name]), fitted, readouts, adapters.pop(), name)
        print(
            f"{name:40s} C={row['C']:<7} calib {row['calib_auroc']:.3f} / {row['calib_accuracy']:.3f}  "
            f"val {row['val_auroc']:.3f}  rule {row['rule']:.3f}",
            flush=True,
        )
    result["tfidf_logreg"] = tfidf_reading(rows)
    result["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "search.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
