"""Packed decision reads on the cached instruction prefix: every request's tokens in one row.

The padded read (:func:`prefix_cache.forward_with_prefix`) left-pads each request's tokens to the
longest in its forward, so the matmuls compute the pads too, and forwards are split by length to
keep that waste down (several forwards per micro-batch when lengths vary). Here the requests'
tokens are laid end to end in a single row of batch 1, on top of the prefix cache: the matmuls
run on real tokens only, in one forward.

Attention is the only operator that must keep the requests apart. The model runs with the
``guardcal_packed`` attention function (registered with transformers' ``AttentionInterface``),
which, during a packed read, computes each request's attention separately: its queries against
the cached prefix's keys and its own keys, causal within the request. Outside a packed read it is
transformers' SDPA function (with SDPA's masks), so every other forward of the model is unchanged.
Which requests the row holds, and each one's attention mask (built once per read, shared by the
layers), travel in a thread-local that is set only for the duration of the read.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from guardcal.errors import BackendError
from guardcal.scoring.prefix_cache import PrefixKV

#: the attention implementation name a model runs under once packing is enabled
PACKED_ATTENTION = "guardcal_packed"
#: the only implementation packing replaces: its function runs every forward that is not packed
BASE_ATTENTION = "sdpa"

_state = threading.local()
_registered = False


@contextlib.contextmanager
def _segments(spans: list[tuple[int, int, Any]]) -> Iterator[None]:
    _state.spans = spans
    try:
        yield
    finally:
        _state.spans = None


def _segment_mask(length: int, cached: int, device: Any = None) -> Any:
    """``(length, cached + length)``: every cached position, then causal within the request."""
    import torch

    keys = torch.arange(cached + length, device=device)[None, :]
    queries = torch.arange(length, device=device)[:, None]
    return (keys < cached) | (keys - cached <= queries)


def packed_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None, **kwargs: Any
) -> tuple[Any, None]:
    """transformers' attention-function signature; ``(batch, length, heads, head_dim)`` out."""
    spans = getattr(_state, "spans", None)
    if spans is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    import torch
    import torch.nn.functional as F  # noqa: N812

    cached = key.shape[2] - query.shape[2]  # the cache holds the prefix, then this row's keys
    outs = []
    for start, end, mask in spans:
        keys = torch.cat([key[:, :, :cached], key[:, :, cached + start : cached + end]], dim=2)
        values = torch.cat([value[:, :, :cached], value[:, :, cached + start : cached + end]], dim=2)
        outs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                keys,
                values,
                attn_mask=mask,
                scale=scaling,
                enable_gqa=query.shape[1] != key.shape[1],
            )
        )
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    _registered = True


def attention_implementation(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def enable_packing(model: Any) -> str | None:
    """Switch ``model`` to the packed attention function; None when done, else why not."""
    current = attention_implementation(model)
    if current == PACKED_ATTENTION:
        return None
    if current != BASE_ATTENTION:
        return f"the model's attention is {current!r}, packing replaces only {BASE_ATTENTION!r}"
    _register()
    model.set_attn_implementation(PACKED_ATTENTION)
    return None


def disable_packing(model: Any) -> None:
    if attention_implementation(model) == PACKED_ATTENTION:
        model.set_attn_implementation(BASE_ATTENTION)


def forward_packed(model: Any, prefix: PrefixKV, rows: Sequence[Sequence[int]]) -> Any:
    """Last-position logits ``(len(rows), vocab)`` for whole-prompt token ``rows`` the prefix covers,
    in one forward with no padding (``model`` must have :func:`enable_packing`)."""
    import torch

    if attention_implementation(model) != PACKED_ATTENTION:  # plain attention would mix the requests
        raise BackendError(f"packed read on a model whose attention is {attention_implementation(model)!r}")
    k, device = len(prefix), next(model.parameters()).device
    tails = [list(r[k:]) for r in rows]
    spans, start = [], 0
    for tail in tails:
        spans.append((start, start + len(tail), _segment_mask(len(tail), k, device)))
        start += len(tail)
    ids = torch.tensor([[t for tail in tails for t in tail]], dtype=torch.long, device=device)
    positions = torch.tensor([[k + i for tail in tails for i in range(len(tail))]], dtype=torch.long, device=device)
    last = torch.tensor([end - 1 for _, end, _ in spans], dtype=torch.long, device=device)
    with torch.inference_mode(), _segments(spans):
        out = model(
            input_ids=ids,
            position_ids=positions,
            past_key_values=prefix.expanded(1),
            use_cache=True,
            logits_to_keep=last,
        )
    return out.logits[0]
