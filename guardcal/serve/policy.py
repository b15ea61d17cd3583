"""From a calibrated P(unsafe) to ``(label, action)``: pure functions, no I/O.

- The calibrated confidence ``max(p, 1 - p)`` below the label's threshold: ``escalate`` (the
  label is provisional); otherwise ``allow`` (safe) or ``block`` (unsafe). Ties (``p = 0.5``)
  predict unsafe, as everywhere in guardcal.
- No decision token, a backend error or a timeout: ``fail_action`` (``escalate`` by default,
  or ``block``) with the label ``unsafe``. ``allow`` is never a fail action.
- The prompt profile's escalate word (e.g. Qwen3Guard's "Controversial") more likely than both
  labels: ``escalate`` (reason ``escalate_label``) whatever the confidence.
- Shadow mode: the response says ``allow`` whatever happens, while ``policy_action`` (what
  enforce mode would have answered) is what gets counted, logged and escalated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from guardcal.calibrate.thresholds import Thresholds
from guardcal.serve.protocol import Action, Label

FailAction = Literal["escalate", "block"]
ServeMode = Literal["enforce", "shadow"]
Reason = Literal[
    "confident", "low_confidence", "escalate_label", "undecided", "backend_error", "timeout", "not_stored"
]
FAIL_ACTIONS: tuple[FailAction, ...] = ("escalate", "block")


@dataclass(frozen=True)
class Decision:
    """One input's outcome; ``p_unsafe`` is the calibrated probability (None when failing closed)."""

    label: Label
    action: Action
    policy_action: Action
    reason: Reason
    p_unsafe: float | None = None

    @property
    def confidence(self) -> float | None:
        """Calibrated confidence ``max(p, 1 - p)``, None without a score."""
        return None if self.p_unsafe is None else max(self.p_unsafe, 1.0 - self.p_unsafe)

    @property
    def escalated(self) -> bool:
        """True when the policy (not necessarily the response) escalates."""
        return self.policy_action == "escalate"


def _check(mode: str, fail_action: str) -> None:
    if fail_action not in FAIL_ACTIONS:
        raise ValueError(f"fail_action must be one of {FAIL_ACTIONS} (never allow), got {fail_action!r}")
    if mode not in ("enforce", "shadow"):
        raise ValueError(f"mode must be 'enforce' or 'shadow', got {mode!r}")


def _shown(policy_action: Action, mode: ServeMode) -> Action:
    return "allow" if mode == "shadow" else policy_action


def fail_closed(reason: Reason, *, mode: ServeMode = "enforce", fail_action: FailAction = "escalate") -> Decision:
    """The decision when there is no usable score: label unsafe, action ``fail_action``."""
    _check(mode, fail_action)
    return Decision("unsafe", _shown(fail_action, mode), fail_action, reason)


def decide(
    p_unsafe: float,
    thresholds: Thresholds,
    *,
    mode: ServeMode = "enforce",
    fail_action: FailAction = "escalate",
) -> Decision:
    """Decide one calibrated P(unsafe); a NaN or out-of-range value fails closed as undecided."""
    return decide_batch([p_unsafe], [True], thresholds, mode=mode, fail_action=fail_action)[0]


def decide_batch(
    p_unsafe: ArrayLike,
    decided: ArrayLike,
    thresholds: Thresholds,
    *,
    mode: ServeMode = "enforce",
    fail_action: FailAction = "escalate",
    escalate: ArrayLike | None = None,
) -> list[Decision]:
    """Decide a batch; ``decided[i]`` False (no decision token) fails closed as undecided; ``escalate[i]``
    True (the profile's escalate word won) escalates."""
    _check(mode, fail_action)
    p = np.asarray(p_unsafe, dtype=np.float64).reshape(-1)
    has_token = np.asarray(decided, dtype=bool).reshape(-1)
    if has_token.shape != p.shape:
        raise ValueError("p_unsafe and decided must have the same length")
    with np.errstate(invalid="ignore"):
        ok = has_token & np.isfinite(p) & (p >= 0.0) & (p <= 1.0)
    auto = np.zeros(p.shape, dtype=bool)
    if ok.any():
        auto[ok] = thresholds.auto_mask(p[ok])
    flagged = np.zeros(p.shape, dtype=bool) if escalate is None else np.asarray(escalate, dtype=bool).reshape(-1)
    out: list[Decision] = []
    for value, usable, automatic, esc in zip(p.tolist(), ok.tolist(), auto.tolist(), flagged.tolist(), strict=True):
        if not usable or math.isnan(value):
            out.append(fail_closed("undecided", mode=mode, fail_action=fail_action))
            continue
        label: Label = "unsafe" if value >= 0.5 else "safe"
        policy_action: Action = ("block" if label == "unsafe" else "allow") if automatic and not esc else "escalate"
        reason: Reason = "escalate_label" if esc else "confident" if automatic else "low_confidence"
        out.append(Decision(label, _shown(policy_action, mode), policy_action, reason, value))
    return out
