"""One start or four? A robustness check of the Learn-Then-Test walk on all calibration rows (measured, not adopted).

``guardcal calibrate --threshold-rows all`` walks each label's thresholds from one start, chosen
without labels (:func:`~guardcal.calibrate.thresholds.label_free_start_errors`); one error more or
less near that start can decide between certifying many rows and none. The alternative measured
here walks from four starts at once (0, 2, 4 and 8 errors), each at ``delta / 4`` (Bonferroni over
the walks, then ``/ 2`` per label as usual), and keeps, per label, the most permissive threshold
any walk certified. Both are compared on:

- the seeded simulation of ``tests/calibrate/test_risk_control_split.py`` (a known truth, 300 rows
  per trial): the share of trials that break the guarantee and the share of the population
  auto-decided;
- a guard's calibration rows (``--predictions``, calibration split only): fitted on one half,
  scored on the other, many times.

    python benchmarks/multistart_walk.py --predictions results/guard/eval --trials 150 --folds 60
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.progress import track

from benchmarks.risk_simulation import coverage, draw, population, true_errors
from benchmarks.threshold_io import calibration_rows, emit
from guardcal.calibrate.base import Calibrator, make_calibrator
from guardcal.calibrate.thresholds import (
    Thresholds,
    coverage_and_error,
    label_free_start_errors,
    risk_controlled_thresholds,
)
from guardcal.core.examples import SAFE, UNSAFE

STARTS = (0, 2, 4, 8)
Walk = Callable[[NDArray[np.float64], NDArray[np.int64], dict[str, Any]], tuple[Calibrator, Thresholds]]


def one_start(p: NDArray[np.float64], y: NDArray[np.int64], targets: dict[str, Any]) -> tuple[Calibrator, Thresholds]:
    """What ``--threshold-rows all`` does: Platt on every row, one label-free start per label."""
    calibrator = make_calibrator("platt").fit(p, y)
    start = label_free_start_errors(p, **targets)
    return calibrator, risk_controlled_thresholds(calibrator.predict(p), y, **targets, start_errors=start)


def four_starts(
    p: NDArray[np.float64], y: NDArray[np.int64], targets: dict[str, Any]
) -> tuple[Calibrator, Thresholds]:
    """Four walks at ``delta / 4`` each; per label the lowest threshold any of them certified."""
    calibrator = make_calibrator("platt").fit(p, y)
    p_cal = calibrator.predict(p)
    best = {SAFE: 1.0, UNSAFE: 1.0}
    for s in STARTS:
        groups = risk_controlled_thresholds(
            p_cal, y, **{**targets, "delta": targets["delta"] / len(STARTS)}, start_errors=s
        ).details["groups"]
        for label, group in groups.items():
            if group["met"]:
                best[label] = min(best[label], group["threshold"])
    never = tuple(label for label in (SAFE, UNSAFE) if best[label] >= 1.0)
    return calibrator, Thresholds(best[SAFE], best[UNSAFE], "risk_controlled", {"starts": list(STARTS)}, never)


WALKS: dict[str, Walk] = {"one start": one_start, "four starts": four_starts}


def simulation(trials: int, alpha: float, delta: float) -> dict[str, dict[str, float]]:
    judged_on = population()
    out = {}
    for name, walk in WALKS.items():
        violations, covered = 0, []
        for trial in track(range(trials), description=f"simulation, {name}"):
            calibrator, thresholds = walk(
                *draw(300, np.random.default_rng(trial)), {"target_error": alpha, "delta": delta}
            )
            violations += any(e > alpha for e in true_errors(calibrator, thresholds, judged_on))
            covered.append(coverage(calibrator, thresholds, judged_on))
        out[name] = {"violation_rate": violations / trials, "coverage": float(np.mean(covered))}
    return out


def halves(predictions: Path, folds: int, targets: dict[str, Any]) -> dict[str, dict[str, float]]:
    p, y = calibration_rows(predictions)
    rng = np.random.default_rng(0)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in WALKS}
    for _ in track(range(folds), description="calibration halves"):
        perm = rng.permutation(p.size)
        fit, held = perm[: p.size // 2], perm[p.size // 2 :]
        for name, walk in WALKS.items():
            calibrator, thresholds = walk(p[fit], y[fit], targets)
            results[name].append(coverage_and_error(calibrator.predict(p[held]), y[held], thresholds))
    return {
        name: {
            "coverage": float(np.mean([r["coverage"] for r in runs])),
            "certified_nothing": float(np.mean([r["n_auto"] == 0 for r in runs])),
        }
        for name, runs in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=Path, help="guardcal evaluate folder (calib split)")
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--folds", type=int, default=60)
    parser.add_argument("--target-error", type=float, default=0.1)
    parser.add_argument("--target-error-unsafe", type=float, default=0.2)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"starts": list(STARTS), "simulation": simulation(args.trials, 0.1, args.delta)}
    if args.predictions:
        targets = {"target_error": args.target_error, "target_error_unsafe": args.target_error_unsafe}
        result["calibration_halves"] = halves(args.predictions, args.folds, {**targets, "delta": args.delta})
        result["predictions"] = str(args.predictions)
    emit(result, args.output)


if __name__ == "__main__":
    main()
