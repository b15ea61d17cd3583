"""The one decision parser: where in a completion the decision token sits.

Used by the GRPO reward and by the calibration-aware loss, so both always
agree on which token is the decision.

Rule: the decision token is the first label token after the last ``</think>``
(reasoning mode), or the first label token of the completion (direct mode),
reading only up to the first end-of-sequence / padding token. A reasoning
completion without ``</think>`` has no decision token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from guardcal.core.labels import LabelSpec


@dataclass(frozen=True)
class DecisionParser:
    """Finds the decision token in completion token ids."""

    spec: LabelSpec
    think_close_ids: tuple[int, ...] = ()
    stop_ids: frozenset[int] = frozenset()
    reasoning: bool = False

    def __post_init__(self) -> None:
        if self.reasoning and not self.think_close_ids:
            raise ValueError("reasoning mode needs the token ids of '</think>'")

    @classmethod
    def for_tokenizer(cls, tokenizer: object, spec: LabelSpec, reasoning: bool) -> DecisionParser:
        """Build a parser from a Hugging Face tokenizer (eos and pad ids stop reading)."""
        from guardcal.core.prompt import THINK_CLOSE

        encode = tokenizer.encode  # type: ignore[attr-defined]
        close = tuple(encode(THINK_CLOSE, add_special_tokens=False)) if reasoning else ()
        stops = {getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None)}
        return cls(spec, close, frozenset(i for i in stops if i is not None), reasoning)

    def find(self, completion_ids: Sequence[int]) -> tuple[int, str] | None:
        """``(position, label)`` of the decision token, or None when there is none."""
        ids = list(completion_ids)
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
        ids = ids[:end]
        start = 0
        if self.reasoning:
            close = _last_occurrence(ids, self.think_close_ids)
            if close is None:
                return None
            start = close + len(self.think_close_ids)
        for pos in range(start, len(ids)):
            label = self.spec.label_of(ids[pos])
            if label is not None:
                return pos, label
        return None


def _last_occurrence(ids: list[int], pattern: tuple[int, ...]) -> int | None:
    n = len(pattern)
    for i in range(len(ids) - n, -1, -1):
        if tuple(ids[i : i + n]) == pattern:
            return i
    return None
