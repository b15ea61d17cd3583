"""What the threshold benchmarks (``start_rule.py``, ``multistart_walk.py``, ``refit_review_split.py``,
``threshold_rows_cv.py``) share: a guard's calibration rows from a ``guardcal evaluate`` folder, the
all-rows fit a walk design is compared with, the calibration-halves measure, and the JSON output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.progress import track

from benchmarks.risk_simulation import Walk
from guardcal.calibrate.base import Calibrator, make_calibrator
from guardcal.calibrate.thresholds import (
    Thresholds,
    coverage_and_error,
    label_free_start_errors,
    risk_controlled_thresholds,
)
from guardcal.calibration_run import rows_from_predictions
from guardcal.core.examples import UNSAFE

FIT = "openai-moderation:calib"


def calibration_rows(folder: Path) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Raw P(unsafe) and 0/1 gold labels (1 = unsafe) of the calibration split, as evaluate scored them."""
    rows = rows_from_predictions(folder, [FIT])[0][FIT]
    p = np.array([r["p_unsafe"] for r in rows])
    return p, np.array([r["label"] == UNSAFE for r in rows], dtype=np.int64)


def fit_all_rows(
    p: NDArray[np.float64], y: NDArray[np.int64], targets: dict[str, Any], draws: int = 256, seed: int = 0
) -> tuple[Calibrator, Thresholds]:
    """What ``--threshold-rows all`` does: Platt on every row, each label's walk from its label-free start."""
    calibrator = make_calibrator("platt").fit(p, y)
    start = label_free_start_errors(p, **targets, draws=draws, seed=seed)
    return calibrator, risk_controlled_thresholds(calibrator.predict(p), y, **targets, start_errors=start)


def calibration_halves(
    p: NDArray[np.float64], y: NDArray[np.int64], walks: Mapping[str, Walk], targets: dict[str, Any], folds: int
) -> dict[str, dict[str, float]]:
    """Per walk design: fitted on one half of the rows, the mean share of the other half auto-decided and the
    share of folds certifying nothing (the same seeded halves for every design)."""
    rng = np.random.default_rng(0)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in walks}
    for _ in track(range(folds), description="calibration halves"):
        perm = rng.permutation(p.size)
        fit, held = perm[: p.size // 2], perm[p.size // 2 :]
        for name, walk in walks.items():
            calibrator, thresholds = walk(p[fit], y[fit], targets)
            runs[name].append(coverage_and_error(calibrator.predict(p[held]), y[held], thresholds))
    return {
        name: {
            "coverage": float(np.mean([r["coverage"] for r in rs])),
            "certified_nothing": float(np.mean([r["n_auto"] == 0 for r in rs])),
        }
        for name, rs in runs.items()
    }


def emit(result: dict[str, Any], output: Path | None) -> None:
    """Print ``result`` as JSON and write it to ``output`` when given."""
    text = json.dumps(result, indent=2) + "\n"
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    print(text)
