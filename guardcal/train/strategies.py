"""What each GRPO-family method changes in the one trainer: reward, advantage, extra loss.

``GuardGRPOTrainer`` runs the rollouts, parses every decision, records the
decision-token readings and calls its ``Objective`` for the rest:

=========  ==========================  ==============================  ==========================
method     reward                      advantage                       extra loss at the decision
=========  ==========================  ==============================  ==========================
grpo       1[correct]                  BNPO (``beta``) or ``group``    —
cal-grpo   1[correct]                  same, 0 at the decision token   λ·CE or λ·Brier
rlcr       1[correct] − (q − 1[c])²    ``group`` (rewards not 0/1)     —
capo       1[correct] (logged)         pairwise logistic (CAPO)        —
=========  ==========================  ==============================  ==========================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec
from guardcal.train import objectives as obj
from guardcal.train import pairwise
from guardcal.train.config import TrainConfig
from guardcal.train.rewards import make_decision_reward, make_rlcr_reward


@dataclass
class GroupBatch:
    """One generation batch, gathered across processes, in group order."""

    correct: torch.Tensor  # (N,) bool: parsed decision == gold
    found: torch.Tensor  # (N,) bool: a decision token was parsed
    group_size: int
    decision_logit: torch.Tensor | None = None  # (N,) log-odds of the sampled decision (T = 1)
    policy_mean_logp: torch.Tensor | None = None  # (N,) mean log-prob of the generated tokens, current policy
    reference_ppl: torch.Tensor | None = None  # (N,) perplexity of the generated tokens, frozen base model


class Objective:
    """Stock GRPO on the decision reward; subclasses change one piece each."""

    name = "grpo"
    zero_decision_advantage = False  # cal-grpo: advantage 0 at the decision token
    decision_loss: str | None = None  # "ce" | "brier": λ·loss at the decision position
    lambda_: float = 0.0
    needs_policy_logps = False  # GroupBatch.policy_mean_logp is filled (one extra no-grad forward)
    needs_reference = False  # GroupBatch.reference_ppl is filled (one forward with the adapter disabled)

    def __init__(self, advantage: str = "beta") -> None:
        self.advantage = advantage
        self.metrics: dict[str, float] = {}

    def reward_function(self, parser: DecisionParser, spec: LabelSpec) -> Callable[..., list[float]]:
        return make_decision_reward(parser)

    def advantages(self, batch: GroupBatch) -> torch.Tensor | None:
        """Advantages for the whole batch, or None to keep TRL's (group-standardised) ones."""
        self.metrics = {}
        if self.advantage == "beta":
            return obj.beta_advantages(batch.correct.float(), batch.group_size)
        return None


class CalGRPO(Objective):
    """arXiv 2601.13284: advantage 0 at the decision token + λ·(CE or Brier) there."""

    name = "cal-grpo"
    zero_decision_advantage = True

    def __init__(self, advantage: str, loss: str, lambda_: float) -> None:
        super().__init__(advantage)
        self.decision_loss = loss
        self.lambda_ = lambda_


class RLCR(Objective):
    """arXiv 2507.16806: GRPO on ``1[correct] − (q − 1[correct])²``, q read at generation time."""

    name = "rlcr"

    def reward_function(self, parser: DecisionParser, spec: LabelSpec) -> Callable[..., list[float]]:
        return make_rlcr_reward(parser, spec)


class CAPO(Objective):
    """arXiv 2604.12632: pairwise logistic advantage over (correct, wrong) pairs + reference noise mask."""

    name = "capo"

    def __init__(
        self,
        tau: float,
        score: str,
        noise_mask: bool,
        thresholds: pairwise.PerplexityThresholds,
    ) -> None:
        super().__init__("pairwise")
        self.tau, self.score, self.noise_mask, self.thresholds = tau, score, noise_mask, thresholds
        self.needs_policy_logps = score == "logprob"
        self.needs_reference = noise_mask

    def scores(self, batch: GroupBatch) -> torch.Tensor:
        s = batch.decision_logit if self.score == "logit" else batch.policy_mean_logp
        if s is None:
            raise ValueError(f"capo score {self.score!r} needs readings the trainer did not record")
        return s

    def advantages(self, batch: GroupBatch) -> torch.Tensor:
        s = self.scores(batch)
        keep = torch.ones_like(batch.correct, dtype=torch.bool)
        m: dict[str, float] = {}
        if self.noise_mask:
            assert batch.reference_ppl is not None
            low, high = self.thresholds.update(batch.reference_ppl)
            keep = pairwise.noise_mask(batch.correct, batch.reference_ppl, low, high)
            c = batch.correct.bool()
            m = {
                "capo/ppl_low": low,
                "capo/ppl_high": high,
                "capo/ref_ppl_mean": float(batch.reference_ppl.double().mean()),
                "capo/ref_mean_logp": float(-batch.reference_ppl.double().log().mean()),
                "capo/masked_correct": float((c & ~keep).sum()) / max(int(c.sum()), 1),
                "capo/masked_incorrect": float((~c & ~keep).sum()) / max(int((~c).sum()), 1),
            }
        adv = pairwise.capo_advantages(batch.correct, s, batch.group_size, self.tau, keep)
        auc = pairwise.pairwise_auc(batch.correct, s, batch.group_size)
        m |= {"capo/score_mean": float(s.double().mean()), "capo/adv_abs_mean": float(adv.abs().mean())}
        if not math.isnan(auc):
            m["capo/group_auc"] = auc
        self.metrics = m
        return adv


def objective_for(cfg: TrainConfig) -> Objective:
    """The objective a (validated) config asks for; SFT has none."""
    if cfg.method == "grpo":
        return Objective(cfg.advantage)
    if cfg.method == "cal-grpo":
        return CalGRPO(cfg.advantage, cfg.calibration_loss, cfg.lambda_ce)
    if cfg.method == "rlcr":
        return RLCR(cfg.advantage)
    if cfg.method == "capo":
        thresholds = pairwise.PerplexityThresholds(
            cfg.capo_mask_low_quantile, cfg.capo_mask_high_quantile, cfg.capo_ppl_low, cfg.capo_ppl_high
        )
        return CAPO(cfg.capo_tau, cfg.capo_score, cfg.capo_noise_mask, thresholds)
    raise ValueError(f"method {cfg.method!r} has no GRPO-family objective")
