"""Tests for escalation thresholds: the rule, serialisation, and the Learn-Then-Test guarantee."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guardcal.calibrate.thresholds import (
    NO_THRESHOLD_FLAG,
    Thresholds,
    coverage_and_error,
    fixed_thresholds,
    risk_controlled_thresholds,
)
from guardcal.errors import CalibrationError


def _calibrated(n: int, rng: np.random.Generator, spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A perfectly calibrated model: ``p = sigmoid(z)``, ``y ~ Bernoulli(p)``."""
    p = 1.0 / (1.0 + np.exp(-rng.normal(0.0, spread, size=n)))
    return p, (rng.uniform(size=n) < p).astype(np.int64)


def _group_errors(p: np.ndarray, y: np.ndarray, t: Thresholds) -> dict[str, float | None]:
    """Error among auto-decided examples, per predicted label."""
    auto, pred_unsafe = t.auto_mask(p), p >= 0.5
    out: dict[str, float | None] = {}
    for label, group in (("safe", ~pred_unsafe), ("unsafe", pred_unsafe)):
        chosen = auto & group
        out[label] = float(np.mean(pred_unsafe[chosen] != (y[chosen] == 1))) if chosen.any() else None
    return out


# ------------------------------------------------------------------ the rule


def test_fixed_thresholds_apply_per_predicted_label() -> None:
    t = fixed_thresholds(0.9, threshold_unsafe=0.7)
    assert (t.safe, t.unsafe, t.method, t.escalate_all) == (0.9, 0.7, "fixed", ())
    p = np.array([0.05, 0.1, 0.15, 0.5, 0.69, 0.7, 0.95])
    # predicted safe: c = 0.95, 0.9 (auto, inclusive), 0.85; predicted unsafe: 0.5, 0.69, 0.7 (auto), 0.95
    assert t.auto_mask(p).tolist() == [True, True, False, False, False, True, True]
    assert t.decide(0.1) == "auto" and t.decide(0.2) == "escalate" and t.decide(0.75) == "auto"


def test_fixed_threshold_defaults_to_both_labels_and_half_auto_decides_all() -> None:
    assert fixed_thresholds(0.8).unsafe == 0.8
    assert fixed_thresholds(0.5).auto_mask(np.linspace(0, 1, 11)).all()
    assert fixed_thresholds(1.0).auto_mask([0.0, 0.3, 1.0]).tolist() == [True, False, True]


@pytest.mark.parametrize("bad", [0.4, 1.01, -1.0, float("nan"), "0.9", True])
def test_fixed_thresholds_validated(bad: object) -> None:
    with pytest.raises(CalibrationError, match=r"in \[0.5, 1\]"):
        fixed_thresholds(bad)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="threshold_unsafe"):
        fixed_thresholds(0.9, threshold_unsafe=bad)  # type: ignore[arg-type]


def test_escalate_all_overrides_the_threshold() -> None:
    t = Thresholds(1.0, 0.6, "manual", {}, escalate_all=("safe",))
    assert t.auto_mask([0.0, 0.9, 1.0]).tolist() == [False, True, True]
    with pytest.raises(CalibrationError, match="escalate_all"):
        Thresholds(1.0, 1.0, "manual", {}, escalate_all=("maybe",))


def test_auto_mask_rejects_bad_probabilities() -> None:
    with pytest.raises(CalibrationError, match="outside"):
        fixed_thresholds(0.9).auto_mask([1.5])


def test_thresholds_json_round_trip() -> None:
    t = Thresholds(0.8, 0.95, "risk_controlled", {"delta": 0.1, "flags": []}, escalate_all=("unsafe",))
    back = Thresholds.from_dict(json.loads(json.dumps(t.to_dict(), allow_nan=False)))
    assert back == t
    assert Thresholds.from_dict({"safe": 0.7, "unsafe": 0.7, "method": "fixed", "details": {}}).escalate_all == ()


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"safe": 0.7, "unsafe": 0.7, "method": "fixed"}, r"missing \['details'\]"),
        ({"unsafe": 0.7, "method": "fixed", "details": {}}, r"missing \['safe'\]"),
        ([0.7], "must be a JSON object"),
        ({"safe": 0.7, "unsafe": 0.7, "method": "fixed", "details": []}, "'details' must be an object"),
    ],
)
def test_thresholds_from_dict_rejects_bad_input(d: object, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        Thresholds.from_dict(d)  # type: ignore[arg-type]


def test_coverage_and_error_by_hand() -> None:
    p = np.array([0.02, 0.3, 0.6, 0.97, 0.99])
    y = np.array([1, 0, 1, 1, 0])
    result = coverage_and_error(p, y, fixed_thresholds(0.95))
    assert result == {"coverage": 0.6, "error": pytest.approx(2 / 3), "n_auto": 3, "n": 5}
    none = coverage_and_error(p, y, fixed_thresholds(1.0))
    assert none == {"coverage": 0.0, "error": None, "n_auto": 0, "n": 5}


# ------------------------------------------------------------------ risk control


@pytest.mark.parametrize("per_label", [True, False])
def test_risk_control_holds_over_simulated_draws(per_label: bool) -> None:
    """Realised error on fresh test draws stays <= alpha in at least 1 - delta of the repetitions."""
    alpha, delta, reps = 0.1, 0.1, 200
    rng = np.random.default_rng(20240601 + per_label)
    violations, coverages = 0, []
    for _ in range(reps):
        t = risk_controlled_thresholds(*_calibrated(500, rng), target_error=alpha, delta=delta, per_label=per_label)
        p_test, y_test = _calibrated(40000, rng)
        if per_label:
            errors = [e for e in _group_errors(p_test, y_test, t).values() if e is not None]
        else:
            errors = [e for e in [coverage_and_error(p_test, y_test, t)["error"]] if e is not None]
        violations += any(e > alpha for e in errors)
        coverages.append(coverage_and_error(p_test, y_test, t)["coverage"])
    assert violations / reps <= delta + 0.03
    assert np.mean(coverages) > 0.4  # not trivially safe by escalating everything


def test_risk_control_is_meaningful_on_a_large_set() -> None:
    rng = np.random.default_rng(11)
    p, y = _calibrated(20000, rng)
    t = risk_controlled_thresholds(p, y, target_error=0.05, delta=0.1)
    assert 0.5 < t.safe < 1.0 and 0.5 < t.unsafe < 1.0 and t.escalate_all == ()
    p_test, y_test = _calibrated(100000, rng)
    realised = coverage_and_error(p_test, y_test, t)
    assert realised["error"] <= 0.05 and realised["coverage"] > 0.6


def test_per_label_thresholds_differ_when_alpha_differs() -> None:
    rng = np.random.default_rng(12)
    p, y = _calibrated(6000, rng)
    t = risk_controlled_thresholds(p, y, target_error=0.02, target_error_unsafe=0.15, delta=0.1)
    assert t.unsafe < t.safe
    assert t.details["target_error"] == {"safe": 0.02, "unsafe": 0.15}
    errors = _group_errors(*_calibrated(100000, rng), t)
    assert errors["safe"] is not None and errors["safe"] <= 0.02
    assert errors["unsafe"] is not None and errors["unsafe"] <= 0.15


def test_impossible_target_escalates_everything() -> None:
    rng = np.random.default_rng(13)
    p, y = _calibrated(300, rng)
    p = np.concatenate([p, [0.0, 1.0]])  # exact 0/1 would be auto-decided by a plain 1.0 threshold
    y = np.concatenate([y, [1, 0]])
    t = risk_controlled_thresholds(p, y, target_error=0.001, delta=0.1)
    assert (t.safe, t.unsafe) == (1.0, 1.0)
    assert set(t.escalate_all) == {"safe", "unsafe"}
    assert t.details["flags"] == [f"safe: {NO_THRESHOLD_FLAG}", f"unsafe: {NO_THRESHOLD_FLAG}"]
    assert "no threshold met the target: everything escalates" in NO_THRESHOLD_FLAG
    assert not t.auto_mask(np.array([0.0, 0.5, 1.0])).any()
    assert t.details["calibration"] == {"coverage": 0.0, "error": None, "n_auto": 0, "n": 302}


def test_one_label_can_fail_while_the_other_is_certified() -> None:
    rng = np.random.default_rng(14)
    p, y = _calibrated(3000, rng)
    y = np.where(p >= 0.5, (rng.uniform(size=p.size) < 0.5).astype(np.int64), y)  # unsafe calls: coin flips
    t = risk_controlled_thresholds(p, y, target_error=0.05, delta=0.1)
    assert t.escalate_all == ("unsafe",) and t.safe < 1.0
    assert t.details["flags"] == [f"unsafe: {NO_THRESHOLD_FLAG}"]
    assert not t.auto_mask([0.999]).any() and t.auto_mask([0.0001]).all()


def test_single_pooled_threshold_without_per_label() -> None:
    rng = np.random.default_rng(15)
    t = risk_controlled_thresholds(*_calibrated(4000, rng), target_error=0.05, delta=0.1, per_label=False)
    assert t.safe == t.unsafe < 1.0
    assert list(t.details["groups"]) == ["all"] and t.details["groups"]["all"]["delta"] == 0.1


def test_details_record_the_choice_and_are_json_safe() -> None:
    rng = np.random.default_rng(16)
    p, y = _calibrated(2000, rng)
    t = risk_controlled_thresholds(p, y, target_error=0.05, delta=0.2)
    d = t.details
    assert d["delta"] == 0.2 and d["per_label"] is True and d["n"] == 2000 and "bonferroni" in d["correction"]
    for label in ("safe", "unsafe"):
        g = d["groups"][label]
        assert g["delta"] == pytest.approx(0.1) and g["alpha"] == 0.05
        assert g["n"] == int(np.sum((p >= 0.5) == (label == "unsafe")))
        assert g["met"] and g["p_value"] <= 0.1 and g["n_auto"] > 0
    assert d["calibration"] == coverage_and_error(p, y, t)
    assert Thresholds.from_dict(json.loads(json.dumps(t.to_dict(), allow_nan=False))) == t


def test_perfect_model_auto_decides_everything() -> None:
    """The walk must not stop at the empty top candidate (1.0 with no examples)."""
    p = np.tile([0.001, 0.999], 200)
    y = np.tile([0, 1], 200)
    t = risk_controlled_thresholds(p, y, target_error=0.05, delta=0.1)
    assert (t.safe, t.unsafe) == (0.999, 0.999)
    assert t.details["calibration"]["coverage"] == 1.0 and t.details["calibration"]["error"] == 0.0


def test_custom_grid_is_used() -> None:
    rng = np.random.default_rng(17)
    grid = np.linspace(0.5, 1.0, 101)
    t = risk_controlled_thresholds(*_calibrated(3000, rng), grid=grid)
    assert np.isclose(grid, t.safe).any() and np.isclose(grid, t.unsafe).any()
    assert t.details["grid"] == "101 given values"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_error": 0.0}, r"target_error must be a number in \(0, 1\)"),
        ({"target_error": 1.5}, "target_error must be"),
        ({"delta": 1.0}, "delta must be"),
        ({"target_error_unsafe": -0.1}, "target_error_unsafe must be"),
        ({"target_error_unsafe": 0.1, "per_label": False}, "needs per_label=True"),
        ({"grid": [0.4, 0.9]}, r"grid must hold .* in \[0.5, 1\]"),
        ({"grid": []}, "grid must hold at least one"),
    ],
)
def test_risk_controlled_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        risk_controlled_thresholds([0.1, 0.9], [0, 1], **kwargs)


def test_risk_controlled_rejects_bad_data() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        risk_controlled_thresholds([], [])
    with pytest.raises(CalibrationError, match="NaN"):
        risk_controlled_thresholds([0.1, float("nan")], [0, 1])


def test_escalation_shares_and_the_uncertified_warning() -> None:
    from guardcal.calibrate.thresholds import escalation_shares, uncertified_warning

    p = [0.02, 0.1, 0.4, 0.6, 0.97]
    fixed = fixed_thresholds(0.8)
    assert uncertified_warning(fixed, escalation_shares(fixed, p)) is None  # every label can be auto-decided
    t = Thresholds(0.8, 1.0, "risk_controlled", {}, escalate_all=("unsafe",))
    shares = escalation_shares(t, p, "fit")
    # auto: 0.02 and 0.1 (safe, confidence >= 0.8); 0.4 is under 0.8; 0.6 and 0.97 are unsafe: never auto
    assert shares == {"rows": "fit", "n": 5, "escalate": pytest.approx(0.6),
                      "predicted": {"safe": pytest.approx(0.6), "unsafe": pytest.approx(0.4)}}  # fmt: skip
    warning = uncertified_warning(t, shares)
    assert warning is not None and "certify nothing for predicted-unsafe" in warning
    assert "on the 5 fit rows 60.0% escalate (40.0% called unsafe)" in warning
    bare = uncertified_warning(t)  # nothing recorded: the label only
    assert bare is not None and "never auto-decided" in bare and "rows" not in bare
    on_purpose = Thresholds(1.0, 1.0, "fixed", {"escalate_below": 1.0}, ("safe", "unsafe"))
    assert uncertified_warning(on_purpose) is None
