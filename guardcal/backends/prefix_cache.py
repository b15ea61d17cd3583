"""Reuse of the instruction prefix's KV cache.

Every rendered prompt starts with the same instruction text (``PromptTemplate.render`` puts the
input after it), so its keys and values are the same for every request. :func:`build_prefix_kv`
runs the model once over those tokens; :func:`forward_with_prefix` then runs only each request's
own tokens on top of that cache, expanded to the batch.

Where the split falls: the prefix text is what all renders share (up to the opening quote of the
input). Its last token is dropped because a BPE tokenizer may merge it with the input's first
characters (SmolLM2 spells an empty input's ``""`` as one token). A prompt uses the cache only
when the tokenisation of the *whole* prompt starts with exactly the prefix ids
(:meth:`PrefixKV.covers`), so prefix ids + the rest is always the whole prompt's tokenisation,
and the causal model computes the same keys and values for those positions either way; any
other prompt takes the full forward.

Layout of a cached batch: the per-request tokens are left-padded after the prefix, the attention
mask covers the prefix and each row's real tokens (pads in between are masked), position ids
continue from the prefix length, and the decision logits are read at the last position.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from guardcal.core.prompt import PromptTemplate
from guardcal.errors import BackendError


@dataclass(frozen=True)
class PrefixKV:
    """The shared prefix's token ids and the model's KV cache for them (batch 1, never mutated)."""

    ids: tuple[int, ...]
    past: Any

    def __len__(self) -> int:
        return len(self.ids)

    def covers(self, row: Sequence[int]) -> bool:
        """True when the prompt's token ids start with the prefix and have at least one more token."""
        k = len(self.ids)
        return len(row) > k and tuple(row[:k]) == self.ids

    def expanded(self, batch: int) -> Any:
        """A fresh copy of the cache repeated ``batch`` times (the model appends to it in place)."""
        past = copy.deepcopy(self.past)
        past.batch_repeat_interleave(batch)
        return past


def template_prefix(template: PromptTemplate) -> str:
    """The text every ``template.render(x)`` starts with, whatever ``x`` is."""
    return os.path.commonprefix([template.render("a"), template.render("b")])


def prefix_token_ids(tokenizer: Any, template: PromptTemplate) -> list[int]:
    """The shared prefix's ids, less the last token (which may merge with the input)."""
    ids = list(tokenizer(template_prefix(template), add_special_tokens=False)["input_ids"])
    return ids[:-1]


def build_prefix_kv(model: Any, ids: Sequence[int]) -> PrefixKV:
    """Run ``model`` once over ``ids`` and keep its KV cache; BackendError when it cannot be reused."""
    import torch

    if not ids:
        raise BackendError("the prompt template has no shared prefix to cache")
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True, logits_to_keep=1)
    past = getattr(out, "past_key_values", None)
    if past is None or not callable(getattr(past, "batch_repeat_interleave", None)):
        raise BackendError(f"{type(model).__name__} returned no reusable KV cache ({type(past).__name__})")
    return PrefixKV(tuple(int(i) for i in ids), past)


def forward_with_prefix(model: Any, prefix: PrefixKV, rows: Sequence[Sequence[int]], pad_id: int) -> Any:
    """Last-position logits ``(len(rows), vocab)`` for whole-prompt token ``rows`` that the prefix covers."""
    import torch

    k, n_rows = len(prefix), len(rows)
    rests = [list(r[k:]) for r in rows]
    width = max(len(r) for r in rests)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_rows, k + width), dtype=torch.long)
    mask[:, :k] = 1
    positions = torch.full((n_rows, width), k, dtype=torch.long)
    for i, rest in enumerate(rests):
        n = len(rest)
        ids[i, width - n :] = torch.tensor(rest, dtype=torch.long)
        mask[i, k + width - n :] = 1
        positions[i, width - n :] = torch.arange(k, k + n)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=prefix.expanded(n_rows),
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1, :]
