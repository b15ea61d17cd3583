"""Long inputs are scored whole: overlapping token windows, the same prompt around each.

The one place that decides how much of an input the model reads. Every scorer (evaluate,
calibrate, training evaluation, both serving backends) splits an input with
:func:`split_text`; training builds its labelled rows from :func:`first_window`.

- An input of at most ``max_tokens`` tokens is one window: the input itself, unchanged (so its
  prompt and score are exactly what they were when inputs were cut at the budget).
- A longer input becomes windows of ``max_tokens`` tokens that overlap by ``overlap`` tokens,
  the last one ending at the input's last token, so every token is read and every run of up to
  ``overlap + 1`` tokens sits whole inside some window. Each window's tokens are decoded back to
  text and rendered into the same prompt as a short input.
- A conversation (``core.conversation``) is windowed on its judged turn only: each window is the
  judged turn's text for that window, shown after the same context turns (which are never split:
  the server's character limit bounds them).
- The input's reading is the reading of its deciding window (:func:`decisive`): the window with
  the highest P(unsafe), so any window over the threshold decides "unsafe". Serving takes that
  maximum on the *calibrated* P(unsafe); evaluation and calibration on the raw one.
- ``max_windows`` caps the work one input can cause: an input that needs more windows raises
  :class:`~guardcal.errors.InputTooLongError` (the server answers 413); it is never cut.

The budget, the overlap and the deciding rule are part of the prompt fingerprint
(:meth:`WindowPolicy.describe`), so a calibration is only served with the window policy it was
fitted with. ``max_windows`` is not: it refuses inputs but changes no score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from guardcal.core.confidence import FloatArray, Scores
from guardcal.errors import ConfigError, InputTooLongError

#: tokens of one window (the old truncation budget: a shorter input is scored exactly as before)
DEFAULT_MAX_TOKENS = 1024
#: windows one served input may need (8 x 1024 tokens with 128 overlapping: 7,296 tokens, about
#: 29,000 characters of English, more than the default 20,000-character limit)
DEFAULT_MAX_WINDOWS = 8
#: how the windows' readings become the input's (recorded in the fingerprint)
RULE = "max-p-unsafe"
#: how an input is cut into windows (recorded in the fingerprint; change it when the cut changes)
SPLIT = "tokens-overlap-v1"


def default_overlap(max_tokens: int) -> int:
    """An eighth of the window (128 tokens of 1024)."""
    return max_tokens // 8


@dataclass(frozen=True)
class WindowPolicy:
    """How an input is split: ``max_tokens`` per window, ``overlap`` shared by neighbours, at most
    ``max_windows`` windows (None: no cap, for evaluation and calibration)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap: int | None = None
    max_windows: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_input_tokens={self.max_tokens}: a window needs at least 1 token; use e.g. 1024")
        if self.overlap is None:
            object.__setattr__(self, "overlap", default_overlap(self.max_tokens))
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ConfigError(
                f"window overlap {self.overlap} must be at least 0 and below the window's {self.max_tokens} tokens"
            )
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"max_windows={self.max_windows}: at least 1 window must be allowed")

    @property
    def overlap_tokens(self) -> int:
        return int(self.overlap if self.overlap is not None else default_overlap(self.max_tokens))

    @property
    def stride(self) -> int:
        """Tokens between the starts of two neighbouring windows."""
        return self.max_tokens - self.overlap_tokens

    def count(self, n_tokens: int) -> int:
        """How many windows an input of ``n_tokens`` tokens is scored as."""
        if n_tokens <= self.max_tokens:
            return 1
        return math.ceil((n_tokens - self.max_tokens) / self.stride) + 1

    def spans(self, n_tokens: int) -> list[tuple[int, int]]:
        """``[start, end)`` token spans of the windows; one span ``(0, n)`` when the input fits."""
        if n_tokens <= self.max_tokens:
            return [(0, n_tokens)]
        last = n_tokens - self.max_tokens
        starts = [*range(0, last, self.stride), last]
        return [(s, s + self.max_tokens) for s in starts]

    @property
    def max_input_tokens(self) -> int | None:
        """The longest input accepted under ``max_windows`` (None without a cap)."""
        if self.max_windows is None:
            return None
        return self.max_tokens + (self.max_windows - 1) * self.stride

    def describe(self) -> dict[str, Any]:
        """What the prompt fingerprint records: everything that changes a score (not ``max_windows``)."""
        return {"window_tokens": self.max_tokens, "overlap": self.overlap_tokens, "split": SPLIT, "decide": RULE}

    def refuse(self, n_tokens: int, index: int | None = None) -> InputTooLongError:
        """The error for an input of ``n_tokens`` tokens that needs more than ``max_windows`` windows."""
        which = "the input" if index is None else f"input {index}"
        return InputTooLongError(
            f"{which} is {n_tokens} tokens long and would be scored as {self.count(n_tokens)} windows of "
            f"{self.max_tokens} tokens ({self.overlap_tokens} overlapping); the limit is {self.max_windows} windows "
            f"per input, {self.max_input_tokens} tokens (GUARDCAL_MAX_WINDOWS, --max-windows); split the text into "
            "several inputs or shorten it, or raise --max-windows. Inputs are never cut.",
            tokens=n_tokens,
            windows=self.count(n_tokens),
            max_windows=self.max_windows,
        )


@dataclass(frozen=True)
class Windowed:
    """One input as scored: its windows (the input itself when it fits) and its token count.

    For a conversation each window is the conversation with its judged turn cut to that window."""

    texts: tuple[Any, ...]
    input_tokens: int


def _ids(text: str, tokenizer: Any) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def split_text(text: Any, tokenizer: Any, policy: WindowPolicy, index: int | None = None) -> Windowed:
    """The windows of ``text`` (a string, or a conversation: its judged turn is what is split);
    InputTooLongError when it needs more than ``policy.max_windows``."""
    judged = text if isinstance(text, str) else text.text
    ids = _ids(judged, tokenizer)
    spans = policy.spans(len(ids))
    if len(spans) == 1:
        return Windowed((text,), len(ids))
    if policy.max_windows is not None and len(spans) > policy.max_windows:
        raise policy.refuse(len(ids), index)
    parts = [str(tokenizer.decode(ids[s:e])) for s, e in spans]
    return Windowed(tuple(parts if isinstance(text, str) else [text.with_text(p) for p in parts]), len(ids))


def split_texts(texts: Sequence[Any], tokenizer: Any, policy: WindowPolicy) -> list[Windowed]:
    """:func:`split_text` for each text; the error names the first text over the cap by its index."""
    return [split_text(t, tokenizer, policy, index=i) for i, t in enumerate(texts)]


def first_window(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The text of the first window only: what a labelled *training* row is built from.

    Training teaches a row's label on one prompt, so an over-budget row keeps its first
    ``max_tokens`` tokens (the first window of :func:`split_text`); scoring never does this.
    """
    ids = _ids(text, tokenizer)
    return text if len(ids) <= max_tokens else str(tokenizer.decode(ids[:max_tokens]))


def decisive(p_unsafe: npt.ArrayLike, decided: npt.ArrayLike, counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Each input's deciding window, as an index into the flat window arrays.

    ``p_unsafe`` and ``decided`` hold every window's reading, input after input (``counts[i]``
    windows for input ``i``). The deciding window is the one with the highest ``p_unsafe`` (the
    first on ties), unless some window has no decision token: then that one decides and the input
    is undecided (fails closed), since its unread part could hold anything.
    """
    p = np.asarray(p_unsafe, dtype=np.float64).reshape(-1)
    ok = np.asarray(decided, dtype=bool).reshape(-1) & np.isfinite(p)
    sizes = np.asarray(counts, dtype=np.int64).reshape(-1)
    if p.shape != ok.shape or int(sizes.sum()) != p.shape[0] or (sizes < 1).any():
        raise ValueError(f"{p.shape[0]} window readings do not match the window counts {sizes.tolist()}")
    out = np.empty(sizes.shape[0], dtype=np.int64)
    start = 0
    for i, n in enumerate(sizes.tolist()):
        part, usable = p[start : start + n], ok[start : start + n]
        out[i] = start + (int(np.argmin(usable)) if not usable.all() else int(np.argmax(part)))
        start += n
    return out


@dataclass(frozen=True)
class WindowedScores(Scores):
    """Per-input readings (``p_safe``/``p_unsafe`` of each input's deciding window, by the raw
    P(unsafe)) plus what was scored: every window's reading, the window counts and token counts."""

    input_tokens: npt.NDArray[np.int64]
    windows: npt.NDArray[np.int64]
    window_p_safe: FloatArray
    window_p_unsafe: FloatArray
    window_p_escalate: FloatArray | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self)
        if self.input_tokens.shape != (n,) or self.windows.shape != (n,):
            raise ValueError("input_tokens and windows need one entry per input")
        if self.window_p_safe.shape != self.window_p_unsafe.shape or self.window_p_safe.shape != (
            int(self.windows.sum()),
        ):
            raise ValueError("window readings must hold one entry per window")

    @classmethod
    def from_windows(cls, window_scores: Scores, counts: Sequence[int], input_tokens: Sequence[int]) -> WindowedScores:
        """Per-input readings from every window's reading (``counts[i]`` windows for input ``i``)."""
        sizes = np.asarray(counts, dtype=np.int64).reshape(-1)
        tokens = np.asarray(input_tokens, dtype=np.int64).reshape(-1)
        if sizes.shape[0] == 0:
            empty = np.zeros(0)
            return cls(empty, empty, tokens, sizes, empty, empty)
        pick = decisive(window_scores.p_unsafe_norm, window_scores.decided, sizes)
        ws = window_scores
        esc = ws.p_escalate
        return cls(
            ws.p_safe[pick],
            ws.p_unsafe[pick],
            tokens,
            sizes,
            ws.p_safe,
            ws.p_unsafe,
            p_escalate=None if esc is None else esc[pick],
            window_p_escalate=esc,
        )

    @property
    def window_scores(self) -> Scores:
        """Every window's reading, input after input."""
        return Scores(self.window_p_safe, self.window_p_unsafe, p_escalate=self.window_p_escalate)

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Where each input's windows start in the flat window arrays."""
        return np.concatenate([[0], np.cumsum(self.windows)[:-1]]).astype(np.int64)

    def select(self, start: int, end: int) -> WindowedScores:
        """Inputs ``start:end`` with their windows."""
        lo = int(self.windows[:start].sum())
        hi = lo + int(self.windows[start:end].sum())
        return WindowedScores(
            self.p_safe[start:end],
            self.p_unsafe[start:end],
            self.input_tokens[start:end],
            self.windows[start:end],
            self.window_p_safe[lo:hi],
            self.window_p_unsafe[lo:hi],
            p_escalate=None if self.p_escalate is None else self.p_escalate[start:end],
            window_p_escalate=None if self.window_p_escalate is None else self.window_p_escalate[lo:hi],
        )
