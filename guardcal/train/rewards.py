"""Reward functions (TRL signature), pure and testable without a trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from guardcal.core.decision import DecisionParser


def make_decision_reward(parser: DecisionParser) -> Callable[..., list[float]]:
    """1.0 when the parsed decision equals the gold label, else 0.0 (no decision token: 0.0)."""

    def decision_reward(
        completions: list[Any], completion_ids: list[list[int]], label: list[str], **_: Any
    ) -> list[float]:
        out = []
        for ids, gold in zip(completion_ids, label, strict=True):
            hit = parser.find(ids)
            out.append(1.0 if hit is not None and hit[1] == gold else 0.0)
        return out

    return decision_reward
