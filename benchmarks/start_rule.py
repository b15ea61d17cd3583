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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks.risk_simulation import Walk, simulate
from benchmarks.threshold_io import calibration_halves, calibration_rows, emit, fit_all_rows
from guardcal.core.examples import SAFE, UNSAFE

DRAWS = (16, 64, 256, 1024)


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


def by_draws() -> dict[str, Walk]:
    """The all-rows fit at each draw count, named by it."""
    return {str(d): partial(fit_all_rows, draws=d) for d in DRAWS}


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
        "simulation": simulate(by_draws(), args.trials, sim_targets),
    }
    for spec in args.predictions:
        name, folder = spec.split("=", 1)
        p, y = calibration_rows(Path(folder))
        result[name] = {
            "predictions": folder,
            "seed_stability": seed_stability(p, y, targets, args.seeds),
            "calibration_halves": calibration_halves(p, y, by_draws(), targets, args.folds),
        }
    emit(result, args.output)


if __name__ == "__main__":
    main()
