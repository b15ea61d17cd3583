"""Pure pieces of the GRPO-family objectives, unit-tested without a trainer.

- ``group_advantages``: TRL's default, ``(r - mean_group) / (std_group + 1e-4)``.
- ``beta_advantages``: BNPO (Xiao et al. 2025, arXiv 2506.02864) for binary
  rewards: ``A = (r - p̂) / f_Beta(p̂; α, β)`` where ``p̂`` is the group's success
  rate, ``(a, b)`` are moment-matched to the batch's ``p̂`` values and
  ``α = 1 + a/3``, ``β = 1 + b/3`` (the variance-minimising choice of the BNPO
  paper). The density is floored at ``min_density`` so rare groups cannot blow up.
- ``decision_targets`` / ``decision_ce``: the calibration-aware term of
  arXiv 2601.13284: ``-Σ_c q(c) log p(c | x, y_<d)``, ``q`` one-hot on the gold
  label when the rollout's decision was correct, uniform when it was wrong.
- ``brier_loss``: ``Σ_c (p(c) - q(c))²`` with the same targets (a bounded
  proper scoring rule; RLCR, arXiv 2507.16806). ``--calibration-loss brier``
  puts it where cal-grpo puts the CE. Gradient difference, for two labels with
  ``p`` the probability of the target label and ``z`` its logit: CE gives
  ``∂L/∂z = p - 1``, which tends to -1 as ``p → 0`` (confidently wrong), while
  Brier gives ``∂L/∂z = -4p(1 - p)²``, which tends to 0 there. With the
  uniform target of a wrong rollout whose sampled (wrong) label has ``p → 1``
  the same holds: CE pulls with ``p - 1/2 → 1/2``, Brier with
  ``4(p - 1/2)p(1 - p) → 0``. Brier barely moves an overconfident rollout.
"""

from __future__ import annotations

import math

import torch

UNIFORM = -1  # decision target of a wrong rollout
NO_DECISION = -2  # a rollout without a decision token: no reward, no CE


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group-standardised advantages (TRL's ``scale_rewards="group"``)."""
    r = rewards.view(-1, group_size)
    mean, std = r.mean(dim=1, keepdim=True), r.std(dim=1, keepdim=True)
    return ((r - mean) / (std + 1e-4)).view(-1)


def beta_parameters(success_rates: torch.Tensor) -> tuple[float, float]:
    """BNPO's (α, β): moment-match Beta(a, b) to the success rates, then α = 1 + a/3, β = 1 + b/3."""
    m = float(success_rates.mean())
    v = float(success_rates.var(unbiased=False)) if success_rates.numel() > 1 else 0.0
    if v <= 1e-12 or m <= 0.0 or m >= 1.0:
        a = b = 1.0  # no spread to fit: fall back to the uniform Beta(1, 1)
    else:
        common = max(m * (1 - m) / v - 1.0, 1e-3)
        a, b = m * common, (1 - m) * common
    return 1.0 + a / 3.0, 1.0 + b / 3.0


def beta_density(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    log_norm = math.lgamma(alpha + beta) - math.lgamma(alpha) - math.lgamma(beta)
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.exp(log_norm + (alpha - 1) * torch.log(p) + (beta - 1) * torch.log1p(-p))


def beta_advantages(rewards: torch.Tensor, group_size: int, min_density: float = 0.1) -> torch.Tensor:
    """BNPO advantages for binary rewards (see module docstring)."""
    r = rewards.view(-1, group_size).float()
    p_hat = r.mean(dim=1, keepdim=True)
    alpha, beta = beta_parameters(p_hat.view(-1))
    density = beta_density(p_hat, alpha, beta).clamp(min=min_density)
    return ((r - p_hat) / density).view(-1)


def zero_at_decision(advantages: torch.Tensor, decision_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T) per-token advantages: the sequence advantage everywhere but 0 at the decision position.

    Rows with ``decision_pos < 0`` (no decision token) keep their advantage on every token.
    """
    per_token = (advantages if advantages.dim() == 2 else advantages[:, None].expand(-1, length)).clone()
    rows = torch.nonzero(decision_pos >= 0).view(-1)
    per_token[rows, decision_pos[rows]] = 0.0
    return per_token


def decision_loss_from_hidden(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    prompt_len: int,
    decision_pos: torch.Tensor,
    target: torch.Tensor,
    label_ids: list[list[int]],
    variant: str = "full",
    loss: str = "ce",
) -> torch.Tensor:
    """A loss of ``DECISION_LOSSES`` (``ce`` or ``brier``) at the decision position, from (B, L, H) hidden states.

    The logits that predict completion token ``d`` come from sequence position
    ``prompt_len + d - 1``; only those rows go through the LM head.
    """
    if loss not in DECISION_LOSSES:
        raise ValueError(f"unknown decision loss {loss!r}; use one of {sorted(DECISION_LOSSES)}")
    rows = torch.nonzero(decision_pos >= 0).view(-1)
    if rows.numel() == 0:
        return hidden.sum() * 0.0
    h = hidden[rows, prompt_len + decision_pos[rows] - 1]
    return DECISION_LOSSES[loss](label_log_probs(lm_head(h), label_ids, variant), target[rows])


def decision_targets(correct: torch.Tensor, gold: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """Per rollout: the gold label index if correct, UNIFORM if wrong, NO_DECISION if unparsed."""
    target = torch.where(correct, gold, torch.full_like(gold, UNIFORM))
    return torch.where(found, target, torch.full_like(gold, NO_DECISION))


def target_distribution(target: torch.Tensor, n_labels: int) -> torch.Tensor:
    """q for each rollout with a decision: one-hot on the gold label, or uniform 1/|C|."""
    q = torch.full((target.numel(), n_labels), 1.0 / n_labels)
    hit = target >= 0
    q[hit] = torch.nn.functional.one_hot(target[hit], n_labels).float()
    return q


def label_log_probs(logits: torch.Tensor, label_ids: list[list[int]], variant: str = "full") -> torch.Tensor:
    """(n, C) log-probabilities of each label's decision token(s) from (n, V) logits.

    ``full``: log-softmax over the vocabulary, leading-space variants summed
    (as written in the paper); ``renorm``: then renormalised over the labels.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_label = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in label_ids], dim=-1)
    if variant == "renorm":
        per_label = torch.log_softmax(per_label, dim=-1)
    elif variant != "full":
        raise ValueError(f"unknown CE variant {variant!r}; use 'full' or 'renorm'")
    return per_label


def decision_ce(label_logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rollouts with a decision of ``-Σ_c q(c) log p(c)``; 0 when there are none."""
    keep = target != NO_DECISION
    if not bool(keep.any()):
        return label_logp.sum() * 0.0
    q = target_distribution(target[keep], label_logp.size(-1)).to(label_logp.device)
    return -(q * label_logp[keep]).sum(dim=-1).mean()


def brier_loss(label_logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rollouts with a decision of ``Σ_c (p(c) - q(c))²``."""
    keep = target != NO_DECISION
    if not bool(keep.any()):
        return label_logp.sum() * 0.0
    q = target_distribution(target[keep], label_logp.size(-1)).to(label_logp.device)
    return ((label_logp[keep].exp() - q) ** 2).sum(dim=-1).mean()


DECISION_LOSSES = {"ce": decision_ce, "brier": brier_loss}
