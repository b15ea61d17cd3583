"""sample_weight in the calibrators and the risk-controlled thresholds (issue 22 item 5: refits from verdicts)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from guardcal.calibrate.base import make_calibrator
from guardcal.calibrate.thresholds import binom_cdf, risk_controlled_thresholds
from guardcal.errors import CalibrationError

METHODS = ("platt", "isotonic", "temperature")


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return 1 / (1 + np.exp(-2.5 * z)), y  # overconfident scores


@pytest.mark.parametrize("method", METHODS)
def test_whole_number_weights_fit_like_repeated_rows(method):
    p, y = _data()
    w = np.random.default_rng(1).integers(1, 4, size=p.size)
    weighted = make_calibrator(method).fit(p, y, sample_weight=w)
    repeated = make_calibrator(method).fit(np.repeat(p, w), np.repeat(y, w))
    grid = np.linspace(0.001, 0.999, 101)
    assert weighted.predict(grid) == pytest.approx(repeated.predict(grid), abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_no_weights_or_unit_weights_fit_the_same_and_zero_weights_drop_rows(method):
    p, y = _data()
    plain = make_calibrator(method).fit(p, y)
    ones = make_calibrator(method).fit(p, y, sample_weight=np.ones(p.size))
    grid = np.linspace(0.001, 0.999, 101)
    assert ones.predict(grid) == pytest.approx(plain.predict(grid), abs=1e-9)
    keep = np.arange(p.size) % 3 != 0
    dropped = make_calibrator(method).fit(p[keep], y[keep])
    zeroed = make_calibrator(method).fit(p, y, sample_weight=keep.astype(float))
    assert zeroed.predict(grid) == pytest.approx(dropped.predict(grid), abs=1e-6)


def test_weights_change_the_fit_towards_the_heavy_rows():
    p, y = _data()
    heavy = np.where((p > 0.5) & (y == 0), 10.0, 1.0)  # wrong confident-unsafe rows weigh 10
    plain, weighted = make_calibrator("platt").fit(p, y), make_calibrator("platt").fit(p, y, sample_weight=heavy)
    assert weighted.predict([0.9])[0] < plain.predict([0.9])[0] - 0.05


def test_bad_weights_are_refused():
    p, y = _data(50)
    cal = make_calibrator("platt")
    for bad in (np.ones(10), np.full(50, np.nan), -np.ones(50), np.where(y == 1, 0.0, 1.0)):
        with pytest.raises(CalibrationError):
            cal.fit(p, y, sample_weight=bad)


def test_the_real_binomial_cdf_is_scipys_at_whole_numbers():
    k, n = np.array([0, 1, 3, 10, 10]), np.array([5, 20, 40, 10, 200])
    assert binom_cdf(k, n, 0.1) == pytest.approx(binom.cdf(k, n, 0.1), rel=1e-9)
    assert binom_cdf([2.5], [30.5], 0.1)[0] == pytest.approx(float(binom_cdf([2], [30], 0.1)[0]), rel=0.5)


def test_equal_weights_choose_the_unweighted_thresholds():
    p, y = _data(600, seed=3)
    kwargs = {"target_error": 0.1, "delta": 0.1}
    plain = risk_controlled_thresholds(p, y, **kwargs)
    for c in (1.0, 7.0):
        weighted = risk_controlled_thresholds(p, y, **kwargs, sample_weight=np.full(p.size, c))
        assert (weighted.safe, weighted.unsafe) == (plain.safe, plain.unsafe)
        assert weighted.details["weighted"] and weighted.details["groups"]["safe"]["n_eff"] > 0


def test_upweighting_confident_mistakes_raises_the_threshold():
    """Audit verdicts that found mistakes among confident decisions, weighed 1/p, make the walk stop earlier."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2.5, size=600)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-z))  # calibrated scores
    kwargs = {"target_error": 0.1, "delta": 0.1}
    plain = risk_controlled_thresholds(p, y, **kwargs)
    assert plain.safe < 0.8 and plain.unsafe < 0.96
    conf = np.maximum(p, 1 - p)
    wrong = (p >= 0.5) != (y == 1)
    w = np.where(wrong & (conf > 0.8), 5.0, 1.0)
    weighted = risk_controlled_thresholds(p, y, **kwargs, sample_weight=w)
    assert weighted.safe >= plain.safe and weighted.unsafe >= plain.unsafe
    assert (weighted.safe, weighted.unsafe) != (plain.safe, plain.unsafe)
