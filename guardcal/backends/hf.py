"""Batched decision-token scoring with transformers.

Direct mode: one forward pass over the rendered prompt, read the last
position. Reasoning mode: generate up to ``max_new_tokens`` tokens, cut at
``</think>`` (appending it when the model never closed the block), append
``Classification:`` and read the next position. Either way the logits at
the decision position go through ``core.confidence``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guardcal.core.confidence import Scores, from_label_logprobs
from guardcal.core.labels import LabelSpec
from guardcal.core.prompt import THINK_CLOSE, PromptTemplate


@dataclass(frozen=True)
class Scored:
    """Scores for a batch of inputs, plus the reasoning text in reasoning mode."""

    scores: Scores
    reasoning: list[str] | None = None


class HFScorer:
    """Scores texts with a loaded transformers model (optionally PEFT-wrapped)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: PromptTemplate | None = None,
        spec: LabelSpec | None = None,
        batch_size: int = 8,
        max_input_tokens: int = 1024,
        max_new_tokens: int = 256,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate()
        self.spec = spec or LabelSpec.from_tokenizer(tokenizer)
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens = max_new_tokens

    def truncate(self, text: str) -> str:
        """Keep the first ``max_input_tokens`` tokens of the input text."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.max_input_tokens:
            return text
        return str(self.tokenizer.decode(ids[: self.max_input_tokens]))

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self.template.render(self.truncate(t)) for t in texts]

    def score(self, texts: Sequence[str], progress: bool = False) -> Scored:
        """Score ``texts`` in length-sorted batches; results keep input order."""
        prompts = self.prompts(texts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        parts: list[Scores] = []
        reasoning: list[str] = []
        for start in _progress(range(0, len(order), self.batch_size), progress):
            batch = [prompts[i] for i in order[start : start + self.batch_size]]
            if self.template.reasoning:
                thoughts = self._generate_reasoning(batch)
                reasoning.extend(thoughts)
                suffix = self.template.decision_suffix()
                batch = [p + t + suffix for p, t in zip(batch, thoughts, strict=True)]
            parts.append(self._read_decision(batch))
        merged = Scores.concat(parts)
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        scores = Scores(merged.p_safe[inverse], merged.p_unsafe[inverse])
        if not self.template.reasoning:
            return Scored(scores)
        return Scored(scores, [reasoning[i] for i in inverse])

    def _encode(self, batch: list[str]) -> dict[str, Any]:
        import torch

        enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        out = {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": positions}
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def _read_decision(self, batch: list[str]) -> Scores:
        import torch

        with torch.inference_mode():
            out = self.model(**self._encode(batch), logits_to_keep=1, use_cache=False)
            logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            label_lp = logprobs[:, list(self.spec.all_ids)].cpu().double().numpy()
        return from_label_logprobs(label_lp, self.spec)

    def _generate_reasoning(self, batch: list[str]) -> list[str]:
        import torch

        enc = self._encode(batch)
        enc.pop("position_ids")
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                stop_strings=[THINK_CLOSE],
                tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [t.split(THINK_CLOSE, 1)[0].rstrip() for t in texts]


def _progress(items: range, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="scoring", unit="batch")
