"""Budget-forced rollouts: reason for at most N tokens, then force the decision position.

Small models rarely close a ``<think>`` block on their own, and a rollout
without a decision token earns nothing. So each rollout is built in two
stages (TRL's ``rollout_func`` hook):

1. sample up to ``reasoning_budget`` tokens after the prompt (stopping early
   at ``</think>`` or end-of-sequence, whose tokens are dropped);
2. append the template's decision suffix (``\\n</think>\\nClassification:``) as
   forced tokens, masked out of the policy loss (``env_mask`` = 0), and sample
   one decision token from the model's distribution at that position.

With ``reasoning_budget = 0`` (direct mode) the completion is the sampled
decision token alone. The decision parser finds the decision token in both.

Given the label spec's token ids (``label_ids``), the rollout also records,
per completion, readings of the decision position taken at generation time
from the untempered (T = 1) distribution, the one the evaluator reads:
``decision_label_logprobs`` (each label's full-vocabulary log-probability,
leading-space variants summed) and ``decision_logit`` (the sampled decision's
log-odds ``log p - log(1 - p)``, with ``p`` its label's mass, or the token's
own probability when it is not a label; ``log(1 - p)`` is summed over the rest
of the vocabulary, so it stays exact when ``p`` is near 1). TRL passes them to
reward functions as columns. They add no sampling: the rollouts themselves
are the same with or without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from guardcal.core.prompt import THINK_CLOSE, PromptTemplate
from guardcal.scoring.prefix_cache import forward_on_cache


class ForcedDecisionRollout:
    """A callable for ``GRPOTrainer(rollout_func=...)``."""

    def __init__(
        self,
        template: PromptTemplate,
        budget: int,
        temperature: float,
        label_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.template = template
        self.budget = budget
        self.temperature = temperature
        self.label_ids = [list(ids) for ids in label_ids] if label_ids is not None else None

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.rollout(prompts, model, tok)
        finally:
            model.train(was_training)

    def rollout(self, prompts: list[str], model: Any, tok: Any) -> dict[str, Any]:
        """One completion per prompt: ``prompt_ids``, ``completion_ids``, ``logprobs``, ``env_mask``."""
        prompt_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
        if self.budget > 0:
            suffix = tok.encode(self.template.decision_suffix(), add_special_tokens=False)
            reasoning, logits = self._reason_then_read(prompt_ids, suffix, model, tok)
        else:
            suffix, reasoning = [], [[] for _ in prompts]
            logits = last_position_logits(prompt_ids, model, tok.pad_token_id)
        decisions, decision_logps, readings = self._sample_decision(logits)
        completion_ids, env_mask, logprobs = [], [], []
        for r, d, lp in zip(reasoning, decisions, decision_logps, strict=True):
            completion_ids.append(r + suffix + [d])
            env_mask.append([1] * len(r) + [0] * len(suffix) + [1])
            logprobs.append([0.0] * (len(r) + len(suffix)) + [lp])
        out = {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs, "env_mask": env_mask}
        return {**out, **readings}

    def _reason_then_read(
        self, prompt_ids: list[list[int]], suffix: list[int], model: Any, tok: Any
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Sample up to ``budget`` reasoning tokens per row, then the logits after reasoning + ``suffix``.

        One KV cache serves all three stages: each distinct prompt is run once (GRPO repeats every
        prompt ``num_generations`` times) and its cache copied to its rows; each step feeds one token
        per row; the decision read feeds only the forced suffix, with the attention mask hiding what
        :func:`cut_reasoning` dropped. The result equals sampling with ``generate`` and re-running the whole
        sequence, within float noise (``tests/train/test_rollout.py``), at a fraction of the compute.
        """
        distinct: dict[tuple[int, ...], int] = {}
        rows = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids])
        first = left_pad([list(p) for p in distinct], tok.pad_token_id, model)
        out = model(**first, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_select_indices(rows.to(first["input_ids"].device))
        logits = out.logits[:, -1, :].float()[rows]
        mask = first["attention_mask"][rows]
        position = first["position_ids"][rows, -1] + 1
        n, device = len(prompt_ids), mask.device
        stops = {tok.eos_token_id, tok.pad_token_id}
        sampled: list[list[int]] = [[] for _ in range(n)]
        alive = torch.ones(n, dtype=torch.bool, device=device)
        for _ in range(self.budget):
            picks = torch.multinomial(torch.softmax(logits / max(self.temperature, 1e-6), dim=-1), 1).view(-1)
            picks = torch.where(alive, picks, torch.full_like(picks, tok.pad_token_id))
            fed = alive.clone()
            for i in torch.nonzero(alive).view(-1).tolist():
                sampled[i].append(int(picks[i]))
                if sampled[i][-1] in stops or THINK_CLOSE in tok.decode(sampled[i]):
                    alive[i] = False
            mask = torch.cat([mask, fed[:, None].long()], dim=1)
            out = model(
                input_ids=picks[:, None],
                attention_mask=mask,
                position_ids=position[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits, position = out.logits[:, -1, :].float(), position + 1
            if not alive.any():
                break
        reasoning = [cut_reasoning(ids, stops, tok) for ids in sampled]
        kept = torch.zeros_like(mask[:, first["input_ids"].shape[1] :])
        for i, r in enumerate(reasoning):
            kept[i, : len(r)] = 1  # what cut_reasoning dropped stays in the cache, hidden
        cached_mask = torch.cat([first["attention_mask"][rows], kept], dim=1)
        seen = first["attention_mask"][rows].sum(-1).tolist()  # each row's real prompt tokens
        starts = [int(k) + len(r) for k, r in zip(seen, reasoning, strict=True)]
        logits = forward_on_cache(model, cache, cached_mask, [suffix] * n, starts, tok.pad_token_id)
        return reasoning, logits.float()

    def _sample_decision(self, logits: torch.Tensor) -> tuple[list[int], list[float], dict[str, list[Any]]]:
        logp = torch.log_softmax(logits / max(self.temperature, 1e-6), dim=-1)
        picks = torch.multinomial(logp.exp(), 1).view(-1)
        readings = self._readings(logits, picks) if self.label_ids is not None else {}
        return picks.tolist(), logp.gather(1, picks[:, None]).view(-1).tolist(), readings

    def _readings(self, logits: torch.Tensor, picks: torch.Tensor) -> dict[str, list[Any]]:
        """Per row: the labels' log-probs and the sampled decision's log-odds, at T = 1."""
        assert self.label_ids is not None
        raw = torch.log_softmax(logits.double(), dim=-1)
        label_lp = torch.stack([torch.logsumexp(raw[:, ids], dim=-1) for ids in self.label_ids], dim=-1)
        own = torch.zeros_like(raw, dtype=torch.bool)  # the sampled decision's tokens (a label's variants)
        for row, pick in enumerate(picks.tolist()):
            group = next((ids for ids in self.label_ids if pick in ids), [pick])
            own[row, group] = True
        inside = torch.logsumexp(raw.masked_fill(~own, float("-inf")), dim=-1)
        outside = torch.logsumexp(raw.masked_fill(own, float("-inf")), dim=-1)
        return {"decision_label_logprobs": label_lp.tolist(), "decision_logit": (inside - outside).tolist()}


def last_position_logits(seqs: list[list[int]], model: Any, pad_id: int) -> torch.Tensor:
    """The float logits at each sequence's last token (one left-padded forward pass)."""
    batch = left_pad(seqs, pad_id, model)
    return model(**batch, logits_to_keep=1).logits[:, -1, :].float()


def cut_reasoning(ids: list[int], stops: set[int], tok: Any) -> list[int]:
    """Drop everything from the first stop token, and from where '</think>' begins."""
    end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    ids = ids[:end]
    while ids and THINK_CLOSE in tok.decode(ids):
        ids = ids[:-1]
    return ids


def left_pad(seqs: list[list[int]], pad_id: int, model: Any) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    device = next(model.parameters()).device
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}
