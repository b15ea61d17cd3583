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
"""

from __future__ import annotations

from typing import Any

import torch

from guardcal.core.prompt import THINK_CLOSE, PromptTemplate


class ForcedDecisionRollout:
    """A callable for ``GRPOTrainer(rollout_func=...)``."""

    def __init__(self, template: PromptTemplate, budget: int, temperature: float) -> None:
        self.template = template
        self.budget = budget
        self.temperature = temperature

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
        decisions, decision_logps = self._sample_next(prefixes, model, tok)
        completion_ids, env_mask, logprobs = [], [], []
        for r, d, lp in zip(reasoning, decisions, decision_logps, strict=True):
            completion_ids.append(r + suffix + [d])
            env_mask.append([1] * len(r) + [0] * len(suffix) + [1])
            logprobs.append([0.0] * (len(r) + len(suffix)) + [lp])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs, "env_mask": env_mask}

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

    def _sample_next(self, prefixes: list[list[int]], model: Any, tok: Any) -> tuple[list[int], list[float]]:
        batch = _left_pad(prefixes, tok.pad_token_id, model)
        logits = model(**batch, logits_to_keep=1).logits[:, -1, :].float()
        logp = torch.log_softmax(logits / max(self.temperature, 1e-6), dim=-1)
        picks = torch.multinomial(logp.exp(), 1).view(-1)
        return picks.tolist(), logp.gather(1, picks[:, None]).view(-1).tolist()


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
