"""benchmarks/guard_scorecard.py: the auto-decisions split by kind, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.guard_scorecard import decided_split
from guardcal.calibrate.thresholds import fixed_thresholds


def test_decided_split_counts_allowed_harm_and_blocked_harmless_by_hand() -> None:
    p = np.array([0.02, 0.05, 0.08, 0.5, 0.6, 0.95, 0.97, 0.99])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    got = decided_split(p, y, fixed_thresholds(0.9))  # auto: p <= 0.1 (allowed) or p >= 0.9 (blocked)
    assert got["allowed"] == pytest.approx(3 / 8) and got["unsafe_among_allowed"] == pytest.approx(1 / 3)
    assert got["blocked"] == pytest.approx(3 / 8) and got["safe_among_blocked"] == pytest.approx(1 / 3)
    nothing = decided_split(p, y, fixed_thresholds(1.0))
    assert nothing == {"allowed": 0.0, "unsafe_among_allowed": None, "blocked": 0.0, "safe_among_blocked": None}
