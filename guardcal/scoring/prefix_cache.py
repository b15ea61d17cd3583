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

Layout of a cached batch (:func:`forward_on_cache`, shared with the other cached reads): the
per-request tokens are left-padded after the prefix, the attention mask covers the prefix and
each row's real tokens (pads in between are masked), position ids continue from the prefix
length, and the decision logits are read at the last position.
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

    k, device = len(prefix), next(model.parameters()).device
    with torch.inference_mode():
        return forward_on_cache(
            model,
            prefix.expanded(len(rows)),
            torch.ones((len(rows), k), dtype=torch.long, device=device),
            [list(r[k:]) for r in rows],
            [k] * len(rows),
            pad_id,
        )


def forward_on_cache(
    model: Any, cache: Any, cached_mask: Any, tails: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int
) -> Any:
    """Last-position logits ``(len(tails), vocab)`` of each row's ``tails[i]`` run on top of ``cache``.

    The one layout every cached read in guardcal uses (the instruction prefix here, the decision
    read after reasoning in the transformers backend and in training rollouts): the tails are
    left-padded to one width after the cached positions; the attention mask is ``cached_mask``
    (``(rows, cached length)``: which cached positions each row sees) followed by each tail's real
    tokens; row i's position ids continue from ``starts[i]``, its number of real tokens before the
    tail. The cache grows in place; the caller picks the grad mode.
    """
    import torch

    n, width, device = len(tails), max(len(t) for t in tails), cached_mask.device
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    for i, (tail, start) in enumerate(zip(tails, starts, strict=True)):
        if tail:
            ids[i, width - len(tail) :] = torch.tensor(list(tail), dtype=torch.long)
            tail_mask[i, width - len(tail) :] = 1
            positions[i, width - len(tail) :] = torch.arange(int(start), int(start) + len(tail))
    out = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([cached_mask.long(), tail_mask.to(device)], dim=1),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :]
