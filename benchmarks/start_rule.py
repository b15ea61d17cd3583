"""How many label draws should choose where the walk starts? (``--threshold-rows all``)

``guardcal calibrate --threshold-rows all`` starts each label's Learn-Then-Test walk at the
``start_errors`` that :func:`~guardcal.calibrate.thresholds.label_free_start_errors` picks: the
start that auto-decides the most rows when each row's label is drawn from its own raw P(unsafe),
summed over seeded draws. With few draws that pick is itself noisy, and one error more or less near
the start decides between certifying many rows and none. This compares draw counts on:

- **seed stability**: on a guard's calibration rows, the start picked with 30 different seeds, and
  the allow / block thresholds the shipped procedure (Platt on every row, walk from that start)
  then certifies. The pick reads raw scores only; the thresholds read the calibration labels,
  as ``guardcal calibrate`` does;
- **the simulation** of ``benchmarks/risk_simulation.py`` (known truth, 300 rows a trial): the
  share of trials that break the guarantee and the share of the population auto-decided;
- **calibration halves**: fitted on one half of a guard's calibration rows, scored on the other.

Only calibration rows are read, so the draw count can be chosen before any test split is scored.

    python benchmarks/start_rule.py --predictions v4=results/guard/eval --predictions v3=V3_EVAL \\
        --output results/guard/start_rule.json
"""

from __future__ import annotations

import argparse
from collections import Counter
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

DRAWS = (16, 64, 256, 1024)


def fit_all_rows(
    p: NDArray[np.float64], y: NDArray[np.int64], targets: dict[str, Any], draws: int, seed: int = 0
) -> tuple[Calibrator, Thresholds]:
    """What ``--threshold-rows all`` does: Platt on every row, the walk from the label-free start."""
    calibrator = make_calibrator("platt").fit(p, y)
    start = label_free_start_errors(p, **targets, draws=draws, seed=seed)
    return calibrator, risk_controlled_thresholds(calibrator.predict(p), y, **targets, start_errors=start)


def seed_stability(p: NDArray[np.float64], y: NDArray[np.int64], targets: dict[str, Any], seeds: int) -> dict:
    """Per draw count: how often each start is picked over ``seeds`` seeds, and the thresholds that follow."""
    out = {}
    for draws in DRAWS:
        starts: dict[str, Counter[int]] = {SAFE: Counter(), UNSAFE: Counter()}
        thresholds: dict[str, list[float]] = {SAFE: [], UNSAFE: []}
        for seed in range(seeds):
            _, t = fit_all_rows(p, y, targets, draws, seed)
            for label in (SAFE, UNSAFE):
                starts[label][t.details["start_errors"][label]] += 1
            thresholds[SAFE].append(t.safe)
            thresholds[UNSAFE].append(t.unsafe)
        out[str(draws)] = {
            label: {
                "starts": {str(s): c for s, c in sorted(starts[label].items())},
                "modal_share": max(starts[label].values()) / seeds,
                "thresholds": {str(v): c for v, c in sorted(Counter(round(x, 4) for x in thresholds[label]).items())},
            }
            for label in (SAFE, UNSAFE)
        }
    return out


def simulation(trials: int, targets: dict[str, Any]) -> dict[str, dict[str, float]]:
    judged_on, alpha = population(), targets["target_error"]  # one alpha for both labels, as in the test
    out = {}
    for draws in DRAWS:
        violations, covered = 0, []
        for trial in track(range(trials), description=f"simulation, {draws} draws"):
            calibrator, thresholds = fit_all_rows(*draw(300, np.random.default_rng(trial)), targets, draws)
            violations += any(e > alpha for e in true_errors(calibrator, thresholds, judged_on))
            covered.append(coverage(calibrator, thresholds, judged_on))
        out[str(draws)] = {"violation_rate": violations / trials, "coverage": float(np.mean(covered))}
    return out


def halves(p: NDArray[np.float64], y: NDArray[np.int64], targets: dict[str, Any], folds: int) -> dict:
    rng = np.random.default_rng(0)
    runs: dict[int, list[dict[str, Any]]] = {d: [] for d in DRAWS}
    for _ in track(range(folds), description="calibration halves"):
        perm = rng.permutation(p.size)
        fit, held = perm[: p.size // 2], perm[p.size // 2 :]
        for draws in DRAWS:
            calibrator, thresholds = fit_all_rows(p[fit], y[fit], targets, draws)
            runs[draws].append(coverage_and_error(calibrator.predict(p[held]), y[held], thresholds))
    return {
        str(d): {
            "coverage": float(np.mean([r["coverage"] for r in rs])),
            "certified_nothing": float(np.mean([r["n_auto"] == 0 for r in rs])),
        }
        for d, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", action="append", default=[], help="NAME=guardcal evaluate folder")
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--folds", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--target-error", type=float, default=0.1)
    parser.add_argument("--target-error-unsafe", type=float, default=0.2)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    targets = {"target_error": args.target_error, "target_error_unsafe": args.target_error_unsafe, "delta": args.delta}
    sim_targets = {"target_error": 0.1, "delta": args.delta}  # the simulation test's single alpha
    result: dict[str, Any] = {
        "draws": list(DRAWS),
        "targets": targets,
        "simulation": simulation(args.trials, sim_targets),
    }
    for spec in args.predictions:
        name, folder = spec.split("=", 1)
        p, y = calibration_rows(Path(folder))
        result[name] = {
            "predictions": folder,
            "seed_stability": seed_stability(p, y, targets, args.seeds),
            "calibration_halves": halves(p, y, targets, args.folds),
        }
    emit(result, args.output)


if __name__ == "__main__":
    main()
