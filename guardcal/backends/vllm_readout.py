"""A pooled head (``core.pooled_head``) read inside vLLM: a pooling model that returns the head's layers.

vLLM's decoder models keep intermediate residual-stream states for EAGLE-3 speculative decoding
(``set_aux_hidden_state_layers``; each is ``hidden_states + residual`` after a layer, which is what
transformers returns as ``hidden_states[layer]``). guardcal registers, for the served model's own
vLLM class, a subclass whose forward returns, per token, the states a head reads side by side:

- ``(layer, False)``: ``hidden_states[layer]`` below the top layer (an aux state);
- ``(layer, True)``: the same after the model's final norm (``mean_normed`` below the top);
- ``(top, False)``: the top layer's output after the final norm, which is ``hidden_states[top]``.

The engine runs it as a pooling model (``runner="pooling"``, the ``token_embed`` task with ``ALL``
pooling: every prompt token's row comes back) with the LoRA applied by vLLM as for the decision
token. :func:`head_features` then averages the judged text's own tokens and takes the last token,
exactly as ``scoring.pooled`` does with transformers. Prefix caching is off: a cached prefix would
skip the forward that yields its states.

The layers travel in the model config (``hf_overrides``), so the engine's workers build the same
class; workers in other processes find it through the ``vllm.general_plugins`` entry point
(:func:`register`). Only vLLM model classes that implement EAGLE-3's aux hidden states (Llama,
Qwen2/3, Mistral, Gemma 3 and more) can read a head; others are refused with the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from guardcal.core.pooled_head import PooledHead
from guardcal.errors import BackendError

PREFIX = "GuardcalReadout"
#: the hf_config key that carries the columns, ``[[layer, normed], ...]``
CONFIG_KEY = "guardcal_readout_columns"
Column = tuple[int, bool]


def columns_for(head: PooledHead, top: int) -> list[Column]:
    """The per-token blocks the engine returns for ``head``, in order (``top``: the model's layer count)."""
    keys = set()
    for pool, layer in head.readouts:
        keys.add((layer, pool == "mean_normed") if layer < top else (top, False))
    return sorted(keys)


def head_features(
    states: np.ndarray, span: tuple[int, int], head: PooledHead, columns: Sequence[Column], top: int
) -> np.ndarray:
    """One prompt's head features from the engine's ``[tokens, len(columns) * hidden]`` rows: for each
    readout a mean over ``states[start:end]`` or the last token's row, from its column block."""
    width = states.shape[1] // len(columns)
    index = {col: k for k, col in enumerate(columns)}
    start, end = span
    parts = []
    for pool, layer in head.readouts:
        k = index[(layer, pool == "mean_normed") if layer < top else (top, False)]
        block = states[:, k * width : (k + 1) * width]
        parts.append(block[-1] if pool == "last" else block[start:end].mean(0))
    return np.concatenate(parts).astype(np.float32)


def _readout_class(base: type) -> type:
    """``base`` (a vLLM ``*ForCausalLM``) returning the configured columns per token instead of logits' input."""
    import torch

    class Readout(base):
        def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            columns = getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None)
            if not columns:
                raise BackendError(f"{type(self).__name__} needs {CONFIG_KEY} in the model config (hf_overrides)")
            self.guardcal_columns = [(int(layer), bool(normed)) for layer, normed in columns]
            top = int(vllm_config.model_config.hf_config.get_text_config().num_hidden_layers)
            self.guardcal_aux = sorted({layer for layer, _ in self.guardcal_columns if layer < top})
            self.guardcal_top = top
            if self.guardcal_aux:
                self.set_aux_hidden_state_layers(tuple(self.guardcal_aux))

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            out = super().forward(*args, **kwargs)
            hidden, aux = out if isinstance(out, tuple) else (out, [])
            by_layer = dict(zip(self.guardcal_aux, aux, strict=True))
            norm = self.get_language_model().model.norm if hasattr(self, "get_language_model") else self.model.norm
            blocks = []
            for layer, normed in self.guardcal_columns:
                if layer >= self.guardcal_top:
                    blocks.append(hidden)
                else:
                    state = by_layer[layer]
                    blocks.append(norm(state) if normed else state)
            return torch.cat(blocks, dim=-1)

    return Readout


def readout_name(architecture: str) -> str:
    return f"{PREFIX}{architecture}"


def register_readout(architecture: str) -> str:
    """Register the readout subclass of vLLM's class for ``architecture`` in this process; its name."""
    from vllm import ModelRegistry

    name = readout_name(architecture)
    if name in ModelRegistry.get_supported_archs():
        return name
    registered = ModelRegistry.models.get(architecture)  # vLLM's own classes, not the transformers fallback
    if registered is None:
        raise BackendError(
            f"vLLM has no model class for {architecture}, so the vllm backend cannot read a pooled head on it; "
            "serve the head with --backend transformers"
        )
    base = registered.load_model_cls()
    if not hasattr(base, "set_aux_hidden_state_layers"):
        raise BackendError(
            f"vLLM's {base.__name__} cannot return intermediate hidden states (no EAGLE-3 aux hidden states), "
            "so the vllm backend cannot read a pooled head on it; serve the head with --backend transformers"
        )
    cls = _readout_class(base)
    cls.__name__ = cls.__qualname__ = name
    ModelRegistry.register_model(name, cls)
    return name


#: the architectures guardcal served heads on in this process; worker processes inherit it
ARCHS_ENV = "GUARDCAL_VLLM_READOUT_ARCHS"


def _requested() -> set[str]:
    import os

    return set(filter(None, os.environ.get(ARCHS_ENV, "").split(",")))


def register() -> None:
    """``vllm.general_plugins`` entry point: in a vLLM worker process, register the readout classes its
    model config asks for (``hf_overrides`` names them ``GuardcalReadout<Architecture>``)."""
    for architecture in sorted(_requested()):
        register_readout(architecture)


def engine_kwargs(head: PooledHead, hf_config: Any) -> dict[str, Any]:
    """What ``vllm.LLM`` needs to serve ``head`` on the model of ``hf_config`` (registers the class here)."""
    import os

    architectures = list(getattr(hf_config, "architectures", None) or [])
    if len(architectures) != 1:
        raise BackendError(f"a pooled head needs a model config naming one architecture; got {architectures}")
    top = int(hf_config.get_text_config().num_hidden_layers)
    name = register_readout(architectures[0])
    os.environ[ARCHS_ENV] = ",".join(sorted(_requested() | {architectures[0]}))
    columns = [[layer, normed] for layer, normed in columns_for(head, top)]
    return {
        "runner": "pooling",
        "hf_overrides": {"architectures": [name], CONFIG_KEY: columns},
        "pooler_config": {"task": "token_embed", "pooling_type": "ALL", "use_activation": False},
        "enable_prefix_caching": False,
    }
