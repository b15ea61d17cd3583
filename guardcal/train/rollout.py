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
        reasoning = self._sample_reasoning(prompt_ids, model, tok) if self.budget > 0 else [[] for _ in prompts]
        suffix = tok.encode(self.template.decision_suffix(), add_special_tokens=False) if self.budget > 0 else []
        prefixes = [p + r + suffix for p, r in zip(prompt_ids, reasoning, strict=True)]
        decisions, decision_logps, readings = self._sample_next(prefixes, model, tok)
        completion_ids, env_mask, logprobs = [], [], []
        for r, d, lp in zip(reasoning, decisions, decision_logps, strict=True):
            completion_ids.append(r + suffix + [d])
            env_mask.append([1] * len(r) + [0] * len(suffix) + [1])
            logprobs.append([0.0] * (len(r) + len(suffix)) + [lp])
        out = {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs, "env_mask": env_mask}
        return {**out, **readings}

    def _sample_reasoning(self, prompt_ids: list[list[int]], model: Any, tok: Any) -> list[list[int]]:
        batch = _left_pad(prompt_ids, tok.pad_token_id, model)
        batch.pop("position_ids")
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.budget,
            stop_strings=[THINK_CLOSE],
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        stops = {tok.eos_token_id, tok.pad_token_id}
        return [_cut(ids, stops, tok) for ids in new]

    def _sample_next(
        self, prefixes: list[list[int]], model: Any, tok: Any
    ) -> tuple[list[int], list[float], dict[str, list[Any]]]:
        logits = last_position_logits(prefixes, model, tok.pad_token_id)
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
    batch = _left_pad(seqs, pad_id, model)
    return model(**batch, logits_to_keep=1).logits[:, -1, :].float()


def _cut(ids: list[int], stops: set[int], tok: Any) -> list[int]:
    """Drop everything from the first stop token, and from where '</think>' begins."""
    end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    ids = ids[:end]
    while ids and THINK_CLOSE in tok.decode(ids):
        ids = ids[:-1]
    return ids


def _left_pad(seqs: list[list[int]], pad_id: int, model: Any) -> dict[str, torch.Tensor]:
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
