"""The one reader that turns decision-position scores into probabilities.

Training evaluation, calibration, evaluation and serving all call this
module; nothing else converts logits or logprobs into a confidence.

Definitions (arXiv 2601.13284):

- ``p_safe`` / ``p_unsafe``: probability of each label's decision token(s)
  over the full vocabulary (leading-space variants summed);
- ``p_unsafe_norm``: ``p_unsafe / (p_safe + p_unsafe)``, renormalised over
  the two labels (what calibrators and policies consume);
- ``pred``: the label with the larger probability (a tie goes to unsafe:
  fail closed);
- ``confidence``: the probability of the predicted label's decision token
  over the full vocabulary (the paper's confidence, top-label);
- ``logit``: ``log p_unsafe - log p_safe`` (the two-label logit);
- ``p_escalate``: probability of the decision token of a profile's third word
  meaning "escalate" (e.g. Qwen3Guard's "Controversial"), None without one;
  ``escalate_top`` says where it beats both labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from guardcal.core.examples import SAFE, UNSAFE
from guardcal.core.labels import LabelSpec

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Scores:
    """Decision-token readings for a batch (one entry per input)."""

    p_safe: FloatArray
    p_unsafe: FloatArray
    p_escalate: FloatArray | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.p_safe.shape != self.p_unsafe.shape or self.p_safe.ndim != 1:
            raise ValueError("p_safe and p_unsafe must be 1-D arrays of equal length")
        if self.p_escalate is not None and self.p_escalate.shape != self.p_safe.shape:
            raise ValueError("p_escalate must have one entry per input")

    @property
    def escalate_top(self) -> npt.NDArray[np.bool_]:
        """True where the escalate word is more likely than both labels (never without one)."""
        if self.p_escalate is None:
            return np.zeros(self.p_safe.shape, dtype=bool)
        return self.p_escalate > np.maximum(self.p_safe, self.p_unsafe)

    def take(self, index: npt.ArrayLike) -> Scores:
        """The readings at ``index`` (plain Scores)."""
        i = np.asarray(index, dtype=np.int64)
        esc = None if self.p_escalate is None else self.p_escalate[i]
        return Scores(self.p_safe[i], self.p_unsafe[i], p_escalate=esc)

    def __len__(self) -> int:
        return int(self.p_safe.shape[0])

    @property
    def label_mass(self) -> FloatArray:
        """Probability mass on the two labels' decision tokens."""
        return self.p_safe + self.p_unsafe

    @property
    def decided(self) -> npt.NDArray[np.bool_]:
        """False where no label token had any probability (nothing to read)."""
        return self.label_mass > 0.0

    @property
    def p_unsafe_norm(self) -> FloatArray:
        """P(unsafe) renormalised over the labels; 0.5 where undecided."""
        mass = self.label_mass
        safe_mass = np.where(mass > 0, mass, 1.0)
        return np.where(mass > 0, self.p_unsafe / safe_mass, 0.5)

    @property
    def pred_unsafe(self) -> npt.NDArray[np.int64]:
        """1 where the predicted label is unsafe (ties are unsafe)."""
        return (self.p_unsafe >= self.p_safe).astype(np.int64)

    @property
    def pred(self) -> list[str]:
        return [UNSAFE if x else SAFE for x in self.pred_unsafe]

    @property
    def confidence(self) -> FloatArray:
        """Probability of the predicted label's decision token (full vocabulary)."""
        return np.maximum(self.p_safe, self.p_unsafe)

    @property
    def logit(self) -> FloatArray:
        """``log p_unsafe - log p_safe``, finite (clipped at 1e-30)."""
        lo = 1e-30
        return np.log(np.maximum(self.p_unsafe, lo)) - np.log(np.maximum(self.p_safe, lo))

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        if not parts:
            return cls(np.zeros(0), np.zeros(0))
        esc = None
        if any(p.p_escalate is not None for p in parts):
            esc = np.concatenate([p.p_escalate if p.p_escalate is not None else np.zeros(len(p)) for p in parts])
        return cls(
            np.concatenate([p.p_safe for p in parts]),
            np.concatenate([p.p_unsafe for p in parts]),
            p_escalate=esc,
        )


def from_label_logprobs(label_logprobs: npt.ArrayLike, spec: LabelSpec) -> Scores:
    """Read a ``(batch, len(spec.all_ids))`` array of full-vocabulary log-probs.

    Columns follow ``spec.all_ids`` order (label by label). Backends that
    hold logits call ``log_softmax`` over the vocabulary and gather these
    columns; nothing else needs the full vocabulary.
    """
    lp = np.asarray(label_logprobs, dtype=np.float64)
    n_ids = len(spec.all_ids)
    if lp.ndim != 2 or lp.shape[1] != n_ids:
        raise ValueError(f"expected shape (batch, {n_ids}), got {lp.shape}")
    # float32 log-softmax rounds a near-certain token to a log-prob a hair above 0 (seen: exp = 1 + 1e-7);
    # a probability is at most 1, so clip the readings there rather than pass > 1 to the metrics
    probs = np.exp(np.minimum(lp, 0.0))
    n_safe, n_unsafe = len(spec.ids_for(SAFE)), len(spec.ids_for(UNSAFE))
    esc = np.minimum(probs[:, n_safe + n_unsafe :].sum(axis=1), 1.0) if len(spec.labels) > 2 else None
    return Scores(
        p_safe=np.minimum(probs[:, :n_safe].sum(axis=1), 1.0),
        p_unsafe=np.minimum(probs[:, n_safe : n_safe + n_unsafe].sum(axis=1), 1.0),
        p_escalate=esc,
    )


def from_logits(logits: npt.ArrayLike, spec: LabelSpec) -> Scores:
    """Read raw ``(batch, vocab)`` logits at the decision position."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected (batch, vocab) logits, got shape {z.shape}")
    top = z.max(axis=1, keepdims=True)
    log_norm = top + np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    return from_label_logprobs(z[:, list(spec.all_ids)] - log_norm, spec)


def from_top_logprobs(rows: Sequence[Mapping[int, float]], spec: LabelSpec) -> Scores:
    """Read per-input ``{token_id: logprob}`` maps (e.g. vLLM top-k logprobs).

    A label token missing from a map counts as probability 0; an input whose
    map holds no label token is undecided (see ``Scores.decided``).
    """
    ids = spec.all_ids
    lp = np.full((len(rows), len(ids)), -np.inf)
    for i, row in enumerate(rows):
        for j, tok in enumerate(ids):
            if tok in row:
                lp[i, j] = float(row[tok])
    return from_label_logprobs(lp, spec)
