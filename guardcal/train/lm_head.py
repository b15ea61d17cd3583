"""Training a LoRA on ``lm_head`` under TRL, which assumes the head is a bare weight.

TRL's trainers compute log-probabilities by multiplying hidden states by ``lm_head.weight``
directly, so they refuse a PEFT adapter on the head in ``__init__`` (it would be skipped and never
trained). guardcal's shipped guard carries one (the probe readout, ``scripts/probe_readout.py``):

- :func:`bare_head_for_trl` shows TRL's ``__init__`` the bare head while it runs; the trainers'
  own losses then call the adapted head module (SFT) or see the merged weight (GRPO, below);
- :func:`merged_lora_head` puts a stand-in head whose ``weight`` is ``W + ΔW`` (PEFT's own delta,
  differentiable in the LoRA factors) in place while TRL's fused LM head runs, so the GRPO
  log-probabilities are those of the adapted model and the head's LoRA gets their gradient. The
  head's LoRA dropout is not applied on that path (the merged weight has no input to drop).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch


def _inner_and_head(model: Any) -> tuple[Any, Any]:
    """(the PEFT model's base model, its output head) when the head carries a LoRA, else (None, None)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else None
    head = inner.get_output_embeddings() if inner is not None else None
    if head is None or not hasattr(head, "base_layer") or not hasattr(head, "get_delta_weight"):
        return None, None
    return inner, head


@contextmanager
def _head_replaced(model: Any, replacement: Any) -> Iterator[None]:
    """While inside, a head-LoRA model's output head is ``replacement(head)``; the adapted head is put back on
    exit, whatever happens (a no-op for a model without a head LoRA)."""
    inner, head = _inner_and_head(model)
    if head is None:
        yield
        return
    inner.set_output_embeddings(replacement(head))
    try:
        yield
    finally:
        inner.set_output_embeddings(head)


def bare_head_for_trl(model: Any) -> AbstractContextManager[None]:
    """Show TRL's ``__init__`` the bare LM head while it runs, then put the adapted one back."""
    return _head_replaced(model, lambda head: head.base_layer)


class MergedHead(torch.nn.Module):
    """An output head that is only a weight (and bias): what TRL's fused LM head reads."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight  # a plain tensor attribute, not a parameter: it is W + ΔW, built per call
        self.bias = bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)


def merged_weight(head: Any) -> torch.Tensor:
    """``W + Σ ΔW`` over the head's active LoRA adapters, differentiable in their factors."""
    weight = head.base_layer.weight
    for name in head.active_adapters:
        if name in head.lora_A and not head.disable_adapters:
            weight = weight + head.get_delta_weight(name)
    return weight


def merged_lora_head(model: Any) -> AbstractContextManager[None]:
    """While inside, the model's output head is a :class:`MergedHead` (no-op without a head LoRA)."""
    return _head_replaced(model, lambda head: MergedHead(merged_weight(head), head.base_layer.bias))
