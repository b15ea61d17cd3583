"""From a backend's scores to what the policy decides on: one reading per input, by its deciding window.

A backend that splits long inputs (``core.windows``) returns :class:`WindowedScores`: every
window's reading. Each window is calibrated, and the input's deciding window is the one with the
highest *calibrated* P(unsafe) (a window without a decision token makes the input undecided, so it
fails closed). The escalation policy then uses that window's confidence, and :attr:`Readings.scored`
says what was scored (``input_tokens``, ``windows``, the deciding window and each window's raw
P(unsafe)) for the escalation payload and the audit record. A backend that returns plain
:class:`Scores` (one reading per input, e.g. ``FakeBackend``) gets them calibrated as they are and
``scored`` entries of None: it did not say how it read the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardcal.calibrate.base import Calibrator
from guardcal.core.confidence import Scores
from guardcal.core.windows import WindowedScores, decisive
from guardcal.errors import BackendError


@dataclass(frozen=True)
class Readings:
    """Per input: the deciding raw and calibrated P(unsafe), whether it was decided, and what was scored."""

    p_raw: NDArray[np.float64]
    p_cal: NDArray[np.float64]
    decided: NDArray[np.bool_]
    scored: list[dict[str, Any] | None]
    #: the profile's escalate word (e.g. "Controversial") beat both labels in the deciding window
    escalate: NDArray[np.bool_] | None = None


def _check(scores: Scores) -> None:
    for arr in (scores.p_safe, scores.p_unsafe):
        if not np.all(np.isfinite(arr)) or np.any(arr < 0.0):
            raise BackendError("backend returned non-finite or negative probabilities")


def readings(scores: Scores, n: int, calibrator: Calibrator | None) -> Readings:
    """The readings of ``n`` inputs; BackendError for unusable scores."""
    if not isinstance(scores, Scores) or len(scores) != n:
        raise BackendError(f"backend returned {type(scores).__name__} for {n} input(s); expected Scores of length {n}")
    _check(scores)
    if not isinstance(scores, WindowedScores):
        p_raw = np.asarray(scores.p_unsafe_norm, dtype=np.float64)
        p_cal = np.asarray(calibrator.predict(p_raw) if calibrator is not None else p_raw, dtype=np.float64)
        return Readings(p_raw, p_cal, np.asarray(scores.decided, dtype=bool), [None] * n, scores.escalate_top)
    every = scores.window_scores
    _check(every)
    w_raw = np.asarray(every.p_unsafe_norm, dtype=np.float64)
    w_cal = np.asarray(calibrator.predict(w_raw) if calibrator is not None else w_raw, dtype=np.float64)
    w_decided = np.asarray(every.decided, dtype=bool)
    pick = decisive(w_cal, w_decided, scores.windows) if n else np.zeros(0, dtype=np.int64)
    scored: list[dict[str, Any] | None] = []
    for i, start in enumerate(scores.offsets.tolist() if n else []):
        count = int(scores.windows[i])
        scored.append(
            {
                "input_tokens": int(scores.input_tokens[i]),
                "windows": count,
                "decisive_window": int(pick[i]) - start,
                "window_p_unsafe_raw": [float(p) for p in w_raw[start : start + count]],
            }
        )
    return Readings(w_raw[pick], w_cal[pick], w_decided[pick], scored, every.escalate_top[pick])
