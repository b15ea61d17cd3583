"""Reward functions (TRL signature), pure and testable without a trainer."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec

RLCR_NO_DECISION = -1.0  # the lowest RLCR reward (wrong with q = 1): not deciding never pays


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


def rlcr_reward_value(correct: bool, q: float) -> float:
    """RLCR (arXiv 2507.16806): ``1[correct] - (q - 1[correct])²``, q = confidence in the answer given."""
    c = 1.0 if correct else 0.0
    return c - (q - c) ** 2


def renormalised_confidence(label_logprobs: Sequence[float], index: int) -> float:
    """Probability of label ``index`` renormalised over the labels, from their log-probs."""
    top = max(label_logprobs)
    weights = [math.exp(x - top) for x in label_logprobs]
    return weights[index] / sum(weights)


def make_rlcr_reward(parser: DecisionParser, spec: LabelSpec) -> Callable[..., list[float]]:
    """RLCR's reward with q = the rollout's decision-token probability, renormalised over the labels.

    q comes from ``decision_label_logprobs``, recorded by the rollout at the
    decision position at generation time (``ForcedDecisionRollout(label_ids=...)``).
    A rollout without a decision token gets ``RLCR_NO_DECISION`` (-1).
    """

    def rlcr_reward(
        completions: list[Any],
        completion_ids: list[list[int]],
        label: list[str],
        decision_label_logprobs: list[Sequence[float]] | None = None,
        **_: Any,
    ) -> list[float]:
        if decision_label_logprobs is None:
            raise ValueError(
                "the rlcr reward needs the decision-token probabilities recorded at generation time "
                "(column 'decision_label_logprobs'); build the rollout with ForcedDecisionRollout(label_ids=...)"
            )
        out = []
        for ids, gold, lps in zip(completion_ids, label, decision_label_logprobs, strict=True):
            hit = parser.find(ids)
            if hit is None:
                out.append(RLCR_NO_DECISION)
                continue
            q = renormalised_confidence(lps, spec.labels.index(hit[1]))
            out.append(rlcr_reward_value(hit[1] == gold, q))
        return out

    return rlcr_reward
