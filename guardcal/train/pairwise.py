"""CAPO's pure pieces (Wang et al., arXiv 2604.12632), unit-tested without a trainer.

GRPO's group advantage is what the pairwise surrogate ``φ(t) = -t`` gives over
the (correct, incorrect) pairs of a group: it is linear in the score gap, so
not consistent with AUC. CAPO uses the logistic surrogate
``φ_τ(t) = log(1 + exp(-t/τ))``, whose derivative is
``φ'_τ(t) = -σ(-t/τ)/τ``. Over the pairs of one group of ``G`` rollouts with
confidence scores ``s``:

- correct ``i``:   ``Ã_i = -(1/G) Σ_{j incorrect} φ'(s_i - s_j)``  (≥ 0)
- incorrect ``j``: ``Ã_j =  (1/G) Σ_{i correct}   φ'(s_i - s_j)``  (≤ 0)

guardcal divides by ``G`` so that ``φ = -t`` gives exactly ``r - mean(r)``
(Dr. GRPO's unscaled group advantage) and the size of the advantage does not
grow with the group size. A correct rollout that is *less* confident than the
wrong ones gets the biggest push up; a wrong rollout that is *more* confident
than the right ones the biggest push down. Groups with one outcome get 0.

Noise mask: a correct rollout whose frozen reference model finds it unlikely
(high perplexity: a lucky guess) and a wrong one the reference finds very
likely (low perplexity: near-correct reasoning) are dropped: advantage 0 and
no part in any pair.
"""

from __future__ import annotations

import torch

SURROGATES = ("logistic", "linear")
SCORES = ("logit", "logprob")


def surrogate_grad(t: torch.Tensor, tau: float, surrogate: str = "logistic") -> torch.Tensor:
    """``φ'(t)``: ``-σ(-t/τ)/τ`` (logistic) or ``-1`` (linear, i.e. GRPO)."""
    if surrogate == "logistic":
        return -torch.sigmoid(-t / tau) / tau
    if surrogate == "linear":
        return -torch.ones_like(t)
    raise ValueError(f"unknown surrogate {surrogate!r}; use one of {SURROGATES}")


def capo_advantages(
    correct: torch.Tensor,
    scores: torch.Tensor,
    group_size: int,
    tau: float = 0.5,
    keep: torch.Tensor | None = None,
    surrogate: str = "logistic",
) -> torch.Tensor:
    """Pairwise advantages for a flat batch of ``n × group_size`` rollouts (see module docstring)."""
    c = correct.view(-1, group_size).bool()
    s = scores.view(-1, group_size).double()
    k = torch.ones_like(c) if keep is None else keep.view(-1, group_size).bool()
    pos, neg = c & k, ~c & k
    gap = s[:, :, None] - s[:, None, :]  # gap[g, i, j] = s_i - s_j
    grad = surrogate_grad(gap, tau, surrogate)
    pair = (pos[:, :, None] & neg[:, None, :]).double()  # i correct and kept, j incorrect and kept
    weighted = grad * pair
    adv_correct = -weighted.sum(dim=2)  # over incorrect partners j of each i
    adv_incorrect = weighted.sum(dim=1)  # over correct partners i of each j
    adv = torch.where(pos, adv_correct, torch.where(neg, adv_incorrect, torch.zeros_like(adv_correct)))
    return (adv / group_size).view(-1).to(scores.dtype if scores.is_floating_point() else torch.float32)


def mean_token_logp(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-prob over the masked tokens of each row (the paper's score; 0 for an empty row)."""
    m = mask.to(token_logps.dtype)
    return (token_logps * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def noise_mask(correct: torch.Tensor, ref_ppl: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """True = keep. Drop correct rollouts with reference perplexity > ``high`` and wrong ones < ``low``."""
    correct = correct.bool()
    drop = (correct & (ref_ppl > high)) | (~correct & (ref_ppl < low))
    return ~drop


class PerplexityThresholds:
    """The noise mask's (low, high) perplexity thresholds.

    Fixed values win when given (> 0); otherwise each is a quantile of the
    reference perplexities of every rollout seen so far in this run (the most
    recent ``history`` of them), so the thresholds are measured on the
    training data and the model in use rather than copied from the paper's
    math setting (2.5 / 1.05).
    """

    def __init__(
        self,
        low_quantile: float = 0.25,
        high_quantile: float = 0.75,
        fixed_low: float = 0.0,
        fixed_high: float = 0.0,
        history: int = 4096,
    ) -> None:
        self.low_quantile, self.high_quantile = low_quantile, high_quantile
        self.fixed_low, self.fixed_high = fixed_low, fixed_high
        self.history = history
        self.seen = torch.zeros(0, dtype=torch.float64)

    def update(self, ref_ppl: torch.Tensor) -> tuple[float, float]:
        """Add this batch's perplexities; return the (low, high) thresholds to use for it."""
        finite = ref_ppl.detach().double().cpu()
        finite = finite[torch.isfinite(finite)]
        self.seen = torch.cat([self.seen, finite])[-self.history :]
        if self.seen.numel() == 0:
            return (self.fixed_low, self.fixed_high or float("inf"))
        low = self.fixed_low or float(torch.quantile(self.seen, self.low_quantile))
        high = self.fixed_high or float(torch.quantile(self.seen, self.high_quantile))
        return low, high


def pairwise_auc(correct: torch.Tensor, scores: torch.Tensor, group_size: int) -> float:
    """Share of (correct, incorrect) pairs within groups that the scores order right (ties count 1/2); NaN if none."""
    c = correct.view(-1, group_size).bool()
    s = scores.view(-1, group_size).double()
    pair = c[:, :, None] & ~c[:, None, :]
    gap = s[:, :, None] - s[:, None, :]
    n = int(pair.sum())
    if n == 0:
        return float("nan")
    wins = ((gap > 0).double() + 0.5 * (gap == 0).double())[pair].sum()
    return float(wins) / n
