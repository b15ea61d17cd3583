"""Paired comparison of two probe_readout.py runs on the same calibration rows (features.npz of each).

    python results/gemma/compare_probes.py RUN_A RUN_B [--boot 2000]

Refits each run's probe (its chosen C) on its training features, scores the 300 calibration rows,
and bootstraps the calibration rows (same resample for both) for the AUROC and accuracy differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def probe_scores(run: Path) -> tuple[np.ndarray, np.ndarray]:
    from guardcal.data.datasets import load_dataset
    from sklearn.linear_model import LogisticRegression

    from guardcal.core.examples import UNSAFE

    f = np.load(run / "features.npz")
    c = json.loads((run / "probe_readout.json").read_text())["C"]
    train = load_dataset("openai-moderation:train")
    calib = load_dataset("openai-moderation:calib")
    assert [str(i) for i in f["ids"]] == [e.id for e in train] + [e.id for e in calib]
    ytr = np.array([e.label == UNSAFE for e in train], dtype=int)
    yca = np.array([e.label == UNSAFE for e in calib], dtype=int)
    lr = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(f["train"], ytr)
    return lr.decision_function(f["calib"]), yca


def main() -> int:
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--boot", type=int, default=2000)
    args = ap.parse_args()
    sa, y = probe_scores(args.a)
    sb, yb = probe_scores(args.b)
    assert (y == yb).all()
    rng = np.random.default_rng(0)
    d_auc, d_acc = [], []
    for _ in range(args.boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        d_auc.append(roc_auc_score(y[i], sb[i]) - roc_auc_score(y[i], sa[i]))
        d_acc.append(np.mean((sb[i] > 0) == y[i]) - np.mean((sa[i] > 0) == y[i]))

    def summary(s: np.ndarray) -> dict:
        return {"auroc": float(roc_auc_score(y, s)), "accuracy": float(np.mean((s > 0) == y))}

    def interval(d: list[float]) -> dict:
        return {"mean": float(np.mean(d)), "ci95": [float(x) for x in np.percentile(d, [2.5, 97.5])]}

    out = {
        "a": str(args.a),
        "b": str(args.b),
        "n_calib": int(len(y)),
        "unsafe_share": float(y.mean()),
        "a_probe": summary(sa),
        "b_probe": summary(sb),
        "b_minus_a_auroc": interval(d_auc),
        "b_minus_a_accuracy": interval(d_acc),
        "score_correlation": float(np.corrcoef(sa, sb)[0, 1]),
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
