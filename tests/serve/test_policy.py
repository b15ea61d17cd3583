"""The pure policy: calibrated P(unsafe) + thresholds + mode + fail_action → (label, action)."""

from __future__ import annotations

import math

import pytest

from guardcal.calibrate.thresholds import Thresholds, fixed_thresholds
from guardcal.serve.errors import StartupError
from guardcal.serve.policy import decide, decide_batch, fail_closed
from guardcal.serve.service import resolve_thresholds


@pytest.mark.parametrize(
    ("p", "label", "action", "reason"),
    [
        (0.02, "safe", "allow", "confident"),
        (0.10, "safe", "allow", "confident"),  # confidence 0.9 reaches the threshold
        (0.11, "safe", "escalate", "low_confidence"),
        (0.50, "unsafe", "escalate", "low_confidence"),  # ties predict unsafe
        (0.89, "unsafe", "escalate", "low_confidence"),
        (0.90, "unsafe", "block", "confident"),
        (1.00, "unsafe", "block", "confident"),
    ],
)
def test_threshold_on_calibrated_confidence(p, label, action, reason):
    d = decide(p, fixed_thresholds(0.9))
    assert (d.label, d.action, d.policy_action, d.reason) == (label, action, action, reason)
    assert d.confidence == pytest.approx(max(p, 1 - p))


def test_per_label_thresholds():
    t = fixed_thresholds(0.95, threshold_unsafe=0.7)
    assert decide(0.08, t).action == "escalate"  # safe needs 0.95
    assert decide(0.04, t).action == "allow"
    assert decide(0.75, t).action == "block"  # unsafe needs only 0.7
    assert decide(0.65, t).action == "escalate"


def test_escalate_all_label_always_escalates():
    t = Thresholds(0.6, 0.6, "risk_controlled", {}, ("unsafe",))
    assert decide(0.999, t).action == "escalate"
    assert decide(0.001, t).action == "allow"


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_escalate_below_one_escalates_everything(make_settings, p):
    t = resolve_thresholds(make_settings(escalate_below=1.0), None)
    assert decide(p, t).action == "escalate"


def test_threshold_resolution_order(make_settings, make_bundle):
    from guardcal.calibrate.bundle import CalibrationBundle

    path = make_bundle(threshold=0.8)
    bundle = CalibrationBundle.load(path)
    assert resolve_thresholds(make_settings(escalate_below=0.95), bundle).safe == 0.95
    assert resolve_thresholds(make_settings(escalate_below=None, bundle=str(path)), bundle).safe == 0.8
    # no bundle and no escalate_below: refused, never a silent fixed threshold on raw probabilities
    with pytest.raises(StartupError, match="--escalate-below"):
        resolve_thresholds(
            make_settings(escalate_below=None, bundle=str(path)).model_copy(update={"bundle": None}), None
        )


def test_shadow_answers_allow_but_keeps_the_policy_action():
    t = fixed_thresholds(0.9)
    blocked = decide(0.99, t, mode="shadow")
    escalated = decide(0.6, t, mode="shadow")
    assert (blocked.action, blocked.policy_action) == ("allow", "block")
    assert (escalated.action, escalated.policy_action, escalated.escalated) == ("allow", "escalate", True)


@pytest.mark.parametrize("fail_action", ["escalate", "block"])
@pytest.mark.parametrize("reason", ["undecided", "backend_error", "timeout"])
def test_fail_closed_never_allows(fail_action, reason):
    d = fail_closed(reason, fail_action=fail_action)
    assert (d.label, d.action, d.reason, d.p_unsafe, d.confidence) == ("unsafe", fail_action, reason, None, None)


def test_fail_action_allow_is_refused():
    with pytest.raises(ValueError, match="never allow"):
        fail_closed("undecided", fail_action="allow")  # type: ignore[arg-type]


@pytest.mark.parametrize("fail_action", ["escalate", "block"])
def test_undecided_and_invalid_values_fail_closed(fail_action):
    p = [0.02, 0.5, math.nan, 1.5, -0.1, 0.98]
    decided = [True, False, True, True, True, True]
    out = decide_batch(p, decided, fixed_thresholds(0.9), fail_action=fail_action)
    assert [d.action for d in out] == ["allow", fail_action, fail_action, fail_action, fail_action, "block"]
    assert all(d.action != "allow" for d in out[1:5])
    assert [d.reason for d in out[1:5]] == ["undecided"] * 4


def test_shadow_fail_closed_answers_allow_and_escalates():
    d = fail_closed("backend_error", mode="shadow")
    assert (d.action, d.policy_action, d.escalated) == ("allow", "escalate", True)


def test_batch_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        decide_batch([0.1, 0.2], [True], fixed_thresholds(0.9))
