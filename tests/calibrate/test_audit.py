"""The audit estimate of the auto-decision error (guardcal.calibrate.audit, issue 22 item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from guardcal.calibrate.audit import audit_estimates, bundle_targets, clopper_pearson, compare, estimate_error
from guardcal.errors import CalibrationError


def test_clopper_pearson_matches_published_values():
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.30850), abs=1e-4)
    assert clopper_pearson(2, 20) == pytest.approx((0.01235, 0.31698), abs=1e-4)
    assert clopper_pearson(10, 10) == pytest.approx((0.69150, 1.0), abs=1e-4)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_equal_rates_give_the_plain_share_and_the_exact_interval():
    est = estimate_error("safe", [True, False, False, False, True] + [False] * 15, [0.2] * 20, target=0.1)
    assert (est.reviewed, est.wrong, est.n_eff) == (20, 2, 20.0)
    assert est.error == pytest.approx(0.1)
    assert (est.lower, est.upper) == pytest.approx(clopper_pearson(2, 20))
    assert est.status == "unconfirmed"  # 0.1 lies inside (0.012, 0.317)


def test_inverse_probability_weights_undo_unequal_sampling():
    """Two periods audited at different rates, with different true error rates: the 1/p-weighted estimate
    recovers the error of all confident decisions; the unweighted share is biased towards the heavier period."""
    rng = np.random.default_rng(0)
    n1, n2, e1, e2, p1, p2 = 20_000, 20_000, 0.02, 0.20, 0.5, 0.05
    wrong = np.concatenate([rng.random(n1) < e1, rng.random(n2) < e2])
    prob = np.concatenate([np.full(n1, p1), np.full(n2, p2)])
    drawn = rng.random(n1 + n2) < prob
    truth = wrong.mean()
    est = estimate_error("safe", wrong[drawn], prob[drawn])
    assert est.error == pytest.approx(truth, abs=0.01)
    assert est.lower < truth < est.upper
    assert abs(wrong[drawn].mean() - truth) > 0.05  # what ignoring the weights would report
    assert est.n_eff < drawn.sum()


def test_compare_with_the_target():
    assert compare(0.0, 0.05, 0.1) == "within"
    assert compare(0.12, 0.3, 0.1) == "above"
    assert compare(0.02, 0.3, 0.1) == "unconfirmed"
    assert compare(0.0, 0.05, None) == "no_target"


def test_audit_estimates_group_by_predicted_label_and_take_the_bundle_targets():
    thresholds = {"method": "risk_controlled", "details": {"target_error": {"safe": 0.1, "unsafe": 0.2}}}
    targets = bundle_targets(thresholds)
    assert targets == {"safe": 0.1, "unsafe": 0.2}
    assert bundle_targets({"method": "fixed", "details": {}}) == {}
    samples = [("safe", "safe", 0.5)] * 60 + [("safe", "unsafe", 0.5)] + [("unsafe", "safe", 1.0)] * 3
    est = audit_estimates(samples, targets)
    assert sorted(est) == ["safe", "unsafe"]
    assert (est["safe"].reviewed, est["safe"].wrong, est["safe"].status) == (61, 1, "within")
    assert est["safe"].upper <= 0.1
    assert (est["unsafe"].wrong, est["unsafe"].error, est["unsafe"].status) == (3, 1.0, "above")


def test_bad_probabilities_are_refused():
    with pytest.raises(CalibrationError):
        estimate_error("safe", [True], [0.0])
    with pytest.raises(CalibrationError):
        estimate_error("safe", [], [])
