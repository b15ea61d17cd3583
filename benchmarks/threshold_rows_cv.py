"""Held-out threshold rows or all of them? Cross-validation on the calibration split alone.

``guardcal calibrate`` can choose its risk-controlled thresholds on a share of the fit rows the
calibrator never sees (``--threshold-rows held-out``) or, for a calibrator that keeps the raw score's
order, on every fit row (``all``). Both keep the guarantee; the question is which auto-decides more
of the inputs it has not seen. This splits a guard's calibration rows in two halves many times
(seeded, stratified by label), fits each design on one half with ``guardcal calibrate``'s own code
(:class:`guardcal.calibration_run.RowUse` and :func:`~guardcal.calibration_run.choose_thresholds`)
and measures on the other half the share auto-decided and the error among those. It reads only the
calibration split, so it can choose the design before the test split is scored.

    python benchmarks/threshold_rows_cv.py --predictions results/guard/eval --method platt \\
        --target-error 0.1 --target-error-unsafe 0.2 --threshold-share 0.667 \\
        --output results/guard/threshold_rows_cv.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from benchmarks.threshold_io import emit
from guardcal.calibrate.base import make_calibrator
from guardcal.calibrate.thresholds import coverage_and_error
from guardcal.calibration_run import (
    CalibrateConfig,
    RowUse,
    choose_thresholds,
    rows_from_predictions,
    split_fit_rows,
)
from guardcal.core.examples import UNSAFE

FIT = "openai-moderation:calib"
DESIGNS = ("held-out", "all")


def one_fold(rows: list[dict[str, Any]], fold: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each design fitted on one half of ``rows``, scored on the other half."""
    train, held = split_fit_rows(rows, 0.5, seed=10_000 + fold)
    p = np.array([r["p_unsafe"] for r in held])
    y = np.array([r["label"] == UNSAFE for r in held], dtype=np.int64)
    out = {}
    for design in DESIGNS:
        cfg = CalibrateConfig(
            output=Path("unused.json"),
            method=args.method,
            target_error=args.target_error,
            target_error_unsafe=args.target_error_unsafe,
            delta=args.delta,
            threshold_share=args.threshold_share,
            threshold_rows=design,
            split_seed=fold,
        )
        use = RowUse.of(cfg, train)
        calibrator = make_calibrator(args.method).fit(
            [r["p_unsafe"] for r in use.calibrator_rows], [r["label"] == UNSAFE for r in use.calibrator_rows]
        )
        thresholds = choose_thresholds(cfg, calibrator, use)
        out[design] = coverage_and_error(calibrator.predict(p), y, thresholds)
    return out


def summary(folds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per design: mean coverage, pooled error among the auto-decided, share of folds certifying nothing."""
    result = {}
    for design in DESIGNS:
        runs = [f[design] for f in folds]
        n_auto = sum(r["n_auto"] for r in runs)
        errors = sum(round(r["error"] * r["n_auto"]) for r in runs if r["n_auto"])
        result[design] = {
            "coverage": float(np.mean([r["coverage"] for r in runs])),
            "error": errors / n_auto if n_auto else None,
            "certified_nothing": float(np.mean([r["n_auto"] == 0 for r in runs])),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=Path, required=True, help="guardcal evaluate folder (calib split)")
    parser.add_argument("--method", default="platt", choices=("platt", "temperature"))
    parser.add_argument("--target-error", type=float, default=0.05)
    parser.add_argument("--target-error-unsafe", type=float)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--threshold-share", type=float, default=0.5, help="the held-out design's share")
    parser.add_argument("--folds", type=int, default=100)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rows = rows_from_predictions(args.predictions, [FIT])[0][FIT]
    folds = [one_fold(rows, fold, args) for fold in track(range(args.folds), description="folds")]
    result = {
        "predictions": str(args.predictions),
        "setting": {k: getattr(args, k) for k in ("method", "target_error", "target_error_unsafe", "delta")}
        | {"threshold_share": args.threshold_share, "folds": args.folds, "rows": len(rows), "half": len(rows) // 2},
        "designs": summary(folds),
    }
    emit(result, args.output)


if __name__ == "__main__":
    main()
