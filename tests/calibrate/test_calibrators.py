"""Tests for the calibrators: guarantees on synthetic data, JSON round trips, input errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from guardcal.calibrate.base import (
    METHODS,
    Calibrator,
    calibrator_from_dict,
    check_calibration_set,
    confidence,
    make_calibrator,
)
from guardcal.calibrate.isotonic import IsotonicCalibrator
from guardcal.calibrate.metrics import ece
from guardcal.calibrate.platt import PlattCalibrator
from guardcal.calibrate.temperature import TemperatureCalibrator
from guardcal.errors import CalibrationError, NotFittedError


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _draw(n: int, seed: int, sharpen: float = 3.0, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident scores ``sigmoid(sharpen * z)`` with gold labels ``y ~ Bernoulli(sigmoid(z))``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, spread, size=n)
    y = (rng.uniform(size=n) < _sigmoid(z)).astype(np.int64)
    return _sigmoid(sharpen * z), y


def _top_label_ece(p: np.ndarray, y: np.ndarray) -> float:
    return ece(confidence(p), ((p >= 0.5) == (y == 1)).astype(int))


@pytest.fixture(scope="module")
def miscalibrated() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"fit": _draw(4000, seed=1), "test": _draw(20000, seed=2)}


@pytest.fixture(scope="module")
def fitted(miscalibrated: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Calibrator]:
    return {method: make_calibrator(method).fit(*miscalibrated["fit"]) for method in METHODS}


EDGE_SCORES = np.array([0.0, 1.0, 5e-324, 1e-300, 1e-12, 0.5, 1.0 - 1e-16, 0.999999999])

# ------------------------------------------------------------------ behaviour on synthetic data


def test_make_calibrator_gives_each_class() -> None:
    assert METHODS == ("platt", "isotonic", "temperature")
    assert isinstance(make_calibrator("platt"), PlattCalibrator)
    assert isinstance(make_calibrator("isotonic"), IsotonicCalibrator)
    assert isinstance(make_calibrator(" Temperature "), TemperatureCalibrator)


def test_isotonic_output_is_monotone(fitted: dict[str, Calibrator]) -> None:
    grid = np.linspace(0.0, 1.0, 2001)
    out = fitted["isotonic"].predict(grid)
    assert np.all(np.diff(out) >= 0.0)
    assert np.all(np.diff(fitted["isotonic"].x_thresholds_) > 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_outputs_in_unit_interval_including_edges(method: str, fitted: dict[str, Calibrator]) -> None:
    out = fitted[method].predict(np.concatenate([EDGE_SCORES, np.linspace(0, 1, 101)]))
    assert out.dtype == np.float64
    assert np.all(np.isfinite(out)) and np.all((out >= 0.0) & (out <= 1.0))


@pytest.mark.parametrize("method", METHODS)
def test_outputs_in_unit_interval_outside_fit_range(method: str) -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.3, 0.7, size=400)
    labels = (rng.uniform(size=400) < scores).astype(int)
    cal = make_calibrator(method).fit(scores, labels)
    out = cal.predict([0.0, 0.01, 0.29, 0.71, 0.99, 1.0])
    assert np.all(np.isfinite(out)) and np.all((out >= 0.0) & (out <= 1.0))
    if method == "isotonic":  # clipped to the end values outside the fitted range
        inside = cal.predict([0.3 + 1e-9, 0.7 - 1e-9])
        assert out[0] == out[1] == cal.y_thresholds_[0]
        assert out[-1] == out[-2] == cal.y_thresholds_[-1]
        assert inside[0] >= out[0] and inside[1] <= out[-1]


def test_platt_is_near_identity_on_calibrated_data() -> None:
    rng = np.random.default_rng(4)
    p = _sigmoid(rng.normal(0.0, 2.0, size=30000))
    y = (rng.uniform(size=p.size) < p).astype(int)
    cal = PlattCalibrator().fit(p, y)
    assert cal.a_ == pytest.approx(1.0, abs=0.06)
    assert cal.b_ == pytest.approx(0.0, abs=0.06)
    grid = np.linspace(0.02, 0.98, 49)
    assert np.max(np.abs(cal.predict(grid) - grid)) < 0.03


@pytest.mark.parametrize("method", METHODS)
def test_each_calibrator_lowers_held_out_ece(
    method: str, fitted: dict[str, Calibrator], miscalibrated: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    scores, labels = miscalibrated["test"]
    before = _top_label_ece(scores, labels)
    after = _top_label_ece(fitted[method].predict(scores), labels)
    assert before > 0.08  # the synthetic model is clearly overconfident
    assert after < 0.5 * before
    assert after < 0.03


def test_temperature_recovers_the_sharpening(fitted: dict[str, Calibrator]) -> None:
    assert fitted["temperature"].temperature_ == pytest.approx(3.0, rel=0.06)


def test_temperature_recovers_sharpening_below_one() -> None:
    cal = TemperatureCalibrator().fit(*_draw(6000, seed=5, sharpen=0.5))
    assert cal.temperature_ == pytest.approx(0.5, rel=0.08)


def test_temperature_keeps_the_predicted_label(fitted: dict[str, Calibrator]) -> None:
    scores = np.linspace(0.01, 0.99, 99)
    assert np.array_equal(fitted["temperature"].predict(scores) >= 0.5, scores >= 0.5)


def test_platt_prior_smoothing_keeps_separable_fit_finite() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    cal = PlattCalibrator().fit(scores, labels)
    assert np.isfinite(cal.a_) and 0.0 < cal.a_ < 50.0
    out = cal.predict([0.0, 1.0])
    assert out[0] > 0.0 and out[1] < 1.0  # smoothed targets keep it away from 0/1


def test_platt_prior_smoothing_targets_shrink_a_small_set() -> None:
    scores, labels = _draw(60, seed=6)
    smooth = PlattCalibrator().fit(scores, labels)
    hard = PlattCalibrator(prior_smoothing=False).fit(scores, labels)
    assert smooth.a_ != hard.a_
    assert smooth.to_dict()["params"]["prior_smoothing"] is True
    assert hard.to_dict()["params"]["prior_smoothing"] is False


def test_confidence_helper() -> None:
    assert confidence([0.0, 0.2, 0.5, 0.9, 1.0]).tolist() == [1.0, 0.8, 0.5, 0.9, 1.0]


def test_predict_accepts_empty_and_scalar_inputs(fitted: dict[str, Calibrator]) -> None:
    assert fitted["platt"].predict([]).shape == (0,)
    assert fitted["isotonic"].predict(0.3).shape == (1,)


# ------------------------------------------------------------------ serialisation


@pytest.mark.parametrize("method", METHODS)
def test_json_round_trip_predicts_bit_identically(method: str, fitted: dict[str, Calibrator]) -> None:
    original = fitted[method]
    state = original.to_dict()
    assert state["method"] == method
    text = json.dumps(state, allow_nan=False)
    restored = calibrator_from_dict(json.loads(text))
    assert type(restored) is type(original)
    scores = np.concatenate([EDGE_SCORES, np.random.default_rng(7).uniform(size=5000)])
    assert np.array_equal(restored.predict(scores), original.predict(scores))
    assert json.dumps(restored.to_dict(), allow_nan=False) == text


def test_to_dict_values_are_plain_json_types(fitted: dict[str, Calibrator]) -> None:
    iso = fitted["isotonic"].to_dict()["params"]
    assert isinstance(iso["x_thresholds_"], list) and all(type(v) is float for v in iso["x_thresholds_"])
    assert type(fitted["temperature"].to_dict()["params"]["temperature_"]) is float
    assert set(fitted["platt"].to_dict()["params"]) == {"prior_smoothing", "a_", "b_"}


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"method": "beta", "params": {}}, "unknown calibration method 'beta'; choose one of"),
        ({"params": {}}, "needs 'method' and 'params'"),
        (["platt"], "needs 'method' and 'params'"),
        ({"method": "platt", "params": {"a_": 1.0}}, r"missing \['b_'\]"),
        ({"method": "platt", "params": {"a_": 1.0, "b_": 0.0, "c_": 2.0}}, r"unknown \['c_'\]"),
        ({"method": "platt", "params": {"a_": "1", "b_": 0.0}}, "'a_' must be a finite number"),
        ({"method": "temperature", "params": {"temperature_": float("nan")}}, "must be a finite number"),
        ({"method": "temperature", "params": {"temperature_": -1.0}}, "must be > 0"),
        ({"method": "platt", "params": {"a_": 1.0, "b_": 0.0, "prior_smoothing": "yes"}}, "True or False"),
        ({"method": "isotonic", "params": {"x_thresholds_": [], "y_thresholds_": []}}, "non-empty list"),
        ({"method": "isotonic", "params": {"x_thresholds_": [0.1, 0.2], "y_thresholds_": [0.5]}}, "has 2 knots"),
        ({"method": "isotonic", "params": {"x_thresholds_": [0.2, 0.1], "y_thresholds_": [0, 1]}}, "increasing"),
        ({"method": "isotonic", "params": {"x_thresholds_": [0.1, 0.2], "y_thresholds_": [0.9, 0.1]}}, "increasing"),
    ],
)
def test_calibrator_from_dict_rejects_bad_input(state: object, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        calibrator_from_dict(state)  # type: ignore[arg-type]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("method", METHODS)
def test_not_fitted_error_before_fit(method: str) -> None:
    cal = make_calibrator(method)
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        cal.predict([0.5])
    with pytest.raises(NotFittedError):
        cal.to_dict()
    assert issubclass(NotFittedError, CalibrationError)


def test_unknown_method() -> None:
    with pytest.raises(
        CalibrationError, match="unknown calibration method 'histogram'; choose one of isotonic, platt"
    ):
        make_calibrator("histogram")


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([], [], "calibration set is empty"),
        ([0.2, 0.4, 0.9], [1, 1, 1], "only one class present: all 3 labels are 'unsafe'.*add examples"),
        ([0.2, 0.4], [0, 0], "only one class present: all 2 labels are 'safe'"),
        ([0.2, float("nan"), 0.9], [0, 1, 1], "1 NaN/inf value"),
        ([0.2, float("inf"), 0.9], [0, 1, 1], "1 NaN/inf value"),
        ([0.2, 1.5, -0.1], [0, 1, 1], "2 value\\(s\\) outside \\[0, 1\\].*not logits"),
        ([0.2, 0.4, 0.9], [0, 1], "scores has 3 values but labels has 2"),
        ([0.2, 0.4], [0, 2], "not in \\{0, 1\\}"),
        ([[0.2, 0.4]], [[0, 1]], "1-D array"),
        (["a", "b"], [0, 1], "not numeric"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_fit_rejects_unusable_sets(method: str, scores: list, labels: list, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        make_calibrator(method).fit(scores, labels)


def test_predict_rejects_nan_and_out_of_range(fitted: dict[str, Calibrator]) -> None:
    with pytest.raises(CalibrationError, match="NaN/inf"):
        fitted["platt"].predict([0.3, float("nan")])
    with pytest.raises(CalibrationError, match="outside \\[0, 1\\]"):
        fitted["isotonic"].predict([1.2])


def test_check_calibration_set_can_allow_one_class() -> None:
    scores, labels = check_calibration_set([0.1, 0.2], [True, True], need_both_classes=False)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 1]


def test_temperature_reports_scipy_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.optimize

    class _Failed:
        success, x, message = False, 0.0, "Maximum number of function calls reached"

    monkeypatch.setattr(scipy.optimize, "minimize_scalar", lambda *args, **kwargs: _Failed())
    with pytest.raises(CalibrationError, match="scipy says 'Maximum number of function calls reached'"):
        TemperatureCalibrator().fit([0.2, 0.8], [0, 1])


# ------------------------------------------------------------------ layering


def test_loading_and_predicting_needs_numpy_only() -> None:
    """Serving a stored calibrator must not pull in torch, scikit-learn or scipy."""
    code = (
        "import sys, json\n"
        "from guardcal.calibrate.base import calibrator_from_dict\n"
        "import guardcal.calibrate.bundle, guardcal.calibrate.thresholds\n"
        "cal = calibrator_from_dict({'method': 'isotonic', 'params': "
        "{'x_thresholds_': [0.0, 1.0], 'y_thresholds_': [0.1, 0.9]}})\n"
        "cal.predict([0.5]); calibrator_from_dict({'method': 'platt', 'params': {'a_': 1.0, 'b_': 0.0}})\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'sklearn', 'scipy') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_keeps_score_order_only_without_fitted_steps_or_a_reversed_slope(fitted: dict[str, Calibrator]) -> None:
    """What `guardcal calibrate --threshold-rows all` relies on: Platt (slope > 0) and temperature keep the raw
    score's order, and a reloaded bundle's calibrator says the same; isotonic's fitted flat steps do not."""
    assert fitted["platt"].keeps_score_order() and fitted["temperature"].keeps_score_order()
    assert not fitted["isotonic"].keeps_score_order()
    for method in ("platt", "temperature"):
        assert calibrator_from_dict(fitted[method].to_dict()).keeps_score_order()
    s = np.linspace(0.01, 0.99, 400)
    backwards = PlattCalibrator().fit(s, (s < 0.5).astype(int))  # P(unsafe) ranks the labels backwards
    assert backwards.a_ < 0 and not backwards.keeps_score_order()
    scores = np.sort(np.random.default_rng(0).uniform(1e-6, 1 - 1e-6, 500))
    assert np.all(np.diff(fitted["platt"].predict(scores)) > 0), "order kept strictly inside the clip"
    with pytest.raises(NotFittedError):
        PlattCalibrator().keeps_score_order()
