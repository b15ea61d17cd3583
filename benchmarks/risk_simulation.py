"""The seeded risk-control simulation shared by tests/calibrate/test_risk_control_split.py and the
threshold benchmarks (``multistart_walk.py``, ``start_rule.py``): raw scores ``s`` with a known
``P(unsafe | s)``, so the true error among auto-decided inputs can be computed, not sampled.

The raw score is overconfident (``truth`` is flatter than the identity) and 2% of labels are
flipped; ``draw`` samples ``n`` scores from a U-shaped beta and their labels from ``truth``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.progress import track
from scipy.special import expit, logit

from guardcal.calibrate.base import Calibrator
from guardcal.calibrate.thresholds import Thresholds

POPULATION_SIZE, POPULATION_SEED = 50_000, 10_000
#: a walk design: (raw P(unsafe), labels, targets) -> the fitted calibrator and its thresholds
Walk = Callable[[NDArray[np.float64], NDArray[np.int64], dict[str, Any]], tuple[Calibrator, Thresholds]]


def truth(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(unsafe | raw score): the raw score is overconfident, and 2% of labels are flipped."""
    return 0.02 + 0.96 * expit(0.8 * logit(s))


def draw(n: int, rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """``n`` raw scores and their 0/1 labels (1 = unsafe)."""
    s = rng.beta(0.25, 0.25, n).clip(1e-6, 1 - 1e-6)
    return s, (rng.random(n) < truth(s)).astype(np.int64)


def population() -> NDArray[np.float64]:
    """The large seeded population the bundles are judged on (its sampled labels are not used)."""
    return draw(POPULATION_SIZE, np.random.default_rng(POPULATION_SEED))[0]


def true_errors(calibrator: Calibrator, thresholds: Thresholds, s: NDArray[np.float64]) -> list[float]:
    """True error among auto-decided inputs of ``s``, per predicted label that auto-decides anything."""
    p = calibrator.predict(s)
    auto, unsafe, g = thresholds.auto_mask(p), p >= 0.5, truth(s)
    errors = []
    for label_unsafe in (False, True):
        m = auto & (unsafe == label_unsafe)
        if m.any():
            errors.append(float(np.mean(1 - g[m] if label_unsafe else g[m])))
    return errors


def coverage(calibrator: Calibrator, thresholds: Thresholds, s: NDArray[np.float64]) -> float:
    """The share of ``s`` auto-decided."""
    return float(thresholds.auto_mask(calibrator.predict(s)).mean())


def simulate(walks: Mapping[str, Walk], trials: int, targets: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per walk design: the share of ``trials`` seeded 300-row calibration sets whose fit breaks the guarantee
    on the population (some label's true error above ``targets["target_error"]``), and the mean share of the
    population it auto-decides."""
    judged_on, alpha = population(), targets["target_error"]
    out = {}
    for name, walk in walks.items():
        violations, covered = 0, []
        for trial in track(range(trials), description=f"simulation, {name}"):
            calibrator, thresholds = walk(*draw(300, np.random.default_rng(trial)), targets)
            violations += any(e > alpha for e in true_errors(calibrator, thresholds, judged_on))
            covered.append(coverage(calibrator, thresholds, judged_on))
        out[name] = {"violation_rate": violations / trials, "coverage": float(np.mean(covered))}
    return out
