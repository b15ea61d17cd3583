"""Paired comparison of two scorers on the same calibration rows.

    python results/gemma/compare_probes.py RUN_A RUN_B [--boot 2000]

A run is a probe_readout.py folder (its features.npz: the probe is refitted with its chosen C on the
training features and scores the 300 calibration rows) or a ``guardcal evaluate`` folder that scored
openai-moderation:calib, or its predictions.jsonl alone (the score is the logit of P(unsafe)). The calibration
rows are bootstrapped (same resample for both) for the AUROC and accuracy differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def probe_scores(run: Path) -> tuple[np.ndarray, np.ndarray]:
    if run.is_file() or (run / "predictions.jsonl").is_file():
        return evaluated_scores(run)
    from sklearn.linear_model import LogisticRegression

    from guardcal.core.examples import UNSAFE
    from guardcal.data.loaders import load_dataset

    f = np.load(run / "features.npz")
    c = json.loads((run / "probe_readout.json").read_text())["C"]
    train = load_dataset("openai-moderation:train")
    calib = load_dataset("openai-moderation:calib")
    assert [str(i) for i in f["ids"]] == [e.id for e in train] + [e.id for e in calib]
    ytr = np.array([e.label == UNSAFE for e in train], dtype=int)
    yca = np.array([e.label == UNSAFE for e in calib], dtype=int)
    lr = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(f["train"], ytr)
    return lr.decision_function(f["calib"]), yca


def calib_predictions(run: Path) -> list[dict]:
    """The calibration rows of a ``guardcal evaluate`` folder, or of a copy of its predictions.jsonl."""
    path = run if run.is_file() else run / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["dataset"] == "openai-moderation:calib"]


def evaluated_scores(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Logit of P(unsafe) and the labels of the calibration rows ``run`` scored (see calib_predictions)."""
    from guardcal.core.examples import UNSAFE
    from guardcal.data.loaders import load_dataset

    calib = load_dataset("openai-moderation:calib")
    p = {r["id"]: r["p_unsafe"] for r in calib_predictions(run)}
    if set(p) != {e.id for e in calib}:
        raise SystemExit(f"{run}: predictions.jsonl does not hold exactly the calibration rows")
    q = np.clip(np.array([p[e.id] for e in calib]), 1e-9, 1 - 1e-9)
    return np.log(q / (1 - q)), np.array([e.label == UNSAFE for e in calib], dtype=int)


def paired_bootstrap(sa: np.ndarray, sb: np.ndarray, y: np.ndarray, boot: int = 2000, seed: int = 0) -> dict:
    """B minus A on the same rows: AUROC and accuracy (score > 0) differences over ``boot`` row resamples."""
    from guardcal.calibrate.metrics import auroc
    from guardcal.calibrate.metrics import paired_bootstrap as differences

    def right(s: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean((s > 0) == labels))

    def interval(d: np.ndarray) -> dict:
        return {"mean": float(np.mean(d)), "ci95": [float(x) for x in np.percentile(d, [2.5, 97.5])]}

    return {
        "b_minus_a_auroc": interval(differences(auroc, sa, sb, y, boot, seed)),
        "b_minus_a_accuracy": interval(differences(right, sa, sb, y, boot, seed)),
    }


def summary(s: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    return {"auroc": float(roc_auc_score(y, s)), "accuracy": float(np.mean((s > 0) == y))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--boot", type=int, default=2000)
    args = ap.parse_args()
    sa, y = probe_scores(args.a)
    sb, yb = probe_scores(args.b)
    assert (y == yb).all()
    out = {
        "a": str(args.a),
        "b": str(args.b),
        "n_calib": int(len(y)),
        "unsafe_share": float(y.mean()),
        "a_probe": summary(sa, y),
        "b_probe": summary(sb, y),
        **paired_bootstrap(sa, sb, y, args.boot),
        "score_correlation": float(np.corrcoef(sa, sb)[0, 1]),
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
