"""Seeded simulations of the review loop, no model (issue 22, "Done when"): the audit estimate covers the true
auto-decision error at its stated level, and a refit that weights audit verdicts by 1/p recovers a known
calibration map where a refit on the escalated band alone is biased outside that band."""

from __future__ import annotations

import numpy as np
import pytest

from guardcal.calibrate.audit import DEFAULT_LEVEL, estimate_error
from guardcal.calibrate.base import make_calibrator

REPLICATES = 400
#: Monte-Carlo slack: the standard error of a 95% coverage measured on 400 replicates is about 0.011
SLACK = 0.02


def _coverage(
    rng: np.random.Generator, error_rates: list[float], rates: list[float], n_each: int
) -> tuple[float, float]:
    """Share of replicates whose interval holds the true error of all confident decisions (two-sided), and whose
    upper bound is at or above it (what the alert reads). Each period of ``n_each`` confident decisions has its
    own true error rate and is audited at its own rate."""
    truth = float(np.mean(error_rates))
    inside = above = 0
    for _ in range(REPLICATES):
        wrong = np.concatenate([rng.random(n_each) < e for e in error_rates])
        prob = np.concatenate([np.full(n_each, p) for p in rates])
        drawn = rng.random(wrong.size) < prob
        est = estimate_error("safe", wrong[drawn], prob[drawn])
        inside += est.lower <= truth <= est.upper
        above += truth <= est.upper
    return inside / REPLICATES, above / REPLICATES


def test_the_audit_estimate_covers_the_true_error_at_its_level():
    rng = np.random.default_rng(0)
    inside, above = _coverage(rng, [0.04], [0.05], 2000)  # one audit rate: the exact Clopper-Pearson interval
    assert inside >= DEFAULT_LEVEL - SLACK and above >= DEFAULT_LEVEL - SLACK
    # two periods audited at different rates, with different error rates: 1/p weights, effective sample size
    inside, above = _coverage(rng, [0.02, 0.08], [0.05, 0.02], 2000)
    assert inside >= DEFAULT_LEVEL - SLACK and above >= DEFAULT_LEVEL - SLACK
    # the rarely audited period holds most errors: Kish's size alone covered 91% here, the smaller size 96%
    inside, above = _coverage(rng, [0.01, 0.10], [0.10, 0.02], 2000)
    assert inside >= DEFAULT_LEVEL - SLACK and above >= DEFAULT_LEVEL - SLACK


def _true_map(s: np.ndarray) -> np.ndarray:
    """P(unsafe | raw score): monotone, miscalibrated (overconfident on the unsafe side)."""
    return 0.02 + 0.96 * s**2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_weighted_refit_recovers_the_map_where_escalations_alone_are_biased(seed):
    """Reviewers see every escalation (calibrated confidence below 0.8, weight 1) and a 5% audit of the
    confident rest (weight 1/p = 20). Isotonic refits are compared with the true map over the confident
    decisions, where escalations alone carry no evidence."""
    rng = np.random.default_rng(seed)
    n, p = 100_000, 0.05
    s = rng.random(n)
    y = (rng.random(n) < _true_map(s)).astype(int)
    escalated = np.maximum(s, 1 - s) < 0.8
    audited = ~escalated & (rng.random(n) < p)
    reviewed = escalated | audited
    weights = np.where(escalated, 1.0, 1.0 / p)[reviewed]
    weighted = make_calibrator("isotonic").fit(s[reviewed], y[reviewed], sample_weight=weights)
    escalations_only = make_calibrator("isotonic").fit(s[escalated], y[escalated])

    confident = s[~escalated]

    def gap(calibrator) -> float:  # type: ignore[no-untyped-def]
        return float(np.abs(calibrator.predict(confident) - _true_map(confident)).mean())

    assert gap(weighted) < 0.03  # measured 0.010-0.020 over seeds 0-9
    assert gap(escalations_only) > 0.08  # 0.10-0.12: flat beyond the band's edge, where the truth climbs
    assert gap(weighted) < gap(escalations_only) / 3
