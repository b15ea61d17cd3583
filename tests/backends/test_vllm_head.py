"""The vllm backend reads a pooled head inside the real engine (``backends/vllm_readout``).

The engine runs the model as a pooling model whose forward returns the head's layers per token; the
backend averages the judged text's tokens and applies the head. It must read what the transformers
backend reads (``scoring.pooled``): same identity, so one bundle serves both, and P(unsafe) within
float32 noise (measured on these inputs: max |diff| 1.4e-6 -> tolerance 1e-4), windows included.
The head is issue 21's committed candidate, on the shipped LoRA (read by vLLM's LoRA) and on the
bare model (no LoRA in the folder).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from guardcal.assets import DEFAULT_ADAPTER
from guardcal.backends.transformers_backend import TransformersBackend
from guardcal.backends.vllm_backend import VLLMBackend
from guardcal.backends.vllm_readout import columns_for, head_features
from guardcal.core.pooled_head import FILENAME, PooledHead
from guardcal.errors import ConfigError

HEAD = Path(__file__).parents[2] / "results" / "guard" / "candidates" / "pooled-head" / "head" / FILENAME
KV = 256 << 20
MAX_INPUT_TOKENS = 64
TEXTS = [
    "How do I kill a python process that hangs?",
    "I will find you and hurt your family.",
    "lovely weather for a walk in the park " * 20,  # about 160 tokens: three windows of 64
    "ok",
]


def _toy_head(readouts: tuple[tuple[str, int], ...], width: int = 4) -> PooledHead:
    n = len(readouts) * width
    return PooledHead(readouts, np.linspace(-1, 1, n), np.zeros(n), np.ones(n), 0.0)


def test_columns_and_features_follow_the_readouts() -> None:
    head = _toy_head((("mean", 1), ("last", 3), ("mean_normed", 1), ("mean_normed", 3), ("last", 1)))
    columns = columns_for(head, top=3)
    assert columns == [(1, False), (1, True), (3, False)]  # at the top, every pool reads the normed output
    states = np.random.default_rng(0).normal(size=(6, 3 * 4))
    got = head_features(states, (2, 5), head, columns, top=3)
    mean = states[2:5].mean(0)
    want = np.concatenate([mean[0:4], states[-1, 8:12], mean[4:8], mean[8:12], states[-1, 0:4]])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _folder(root: Path, lora: bool, head: PooledHead | None = None) -> Path:
    """The candidate head (or ``head``), with the shipped LoRA or alone."""
    folder = root / ("lora-and-head" if lora else "head-only")
    folder.mkdir()
    if lora:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(DEFAULT_ADAPTER / name, folder / name)
    if head is None:
        shutil.copyfile(HEAD, folder / FILENAME)
    else:
        head.save(folder / FILENAME)
    return folder


#: every pool, below the top and at it: mean_normed below the top runs the final norm inside the engine
ALL_POOLS = (("mean_normed", 15), ("mean", 5), ("last", 12), ("mean_normed", 30), ("last", 30))


@pytest.mark.parametrize(
    ("lora", "readouts"),
    [(True, None), (False, None), (False, ALL_POOLS)],
    ids=["shipped-lora", "bare-model", "every-pool"],
)
def test_vllm_reads_the_head_as_transformers_does(vllm_env, scored, tmp_path, lora, readouts) -> None:  # type: ignore[no-untyped-def]
    head = None
    if readouts is not None:  # a head of random weights: what counts is that both backends read the same
        rng = np.random.default_rng(1)
        n = len(readouts) * 576
        head = PooledHead(readouts, rng.normal(size=n) / 30, rng.normal(size=n) / 10, rng.uniform(1, 3, n), 0.0)
    folder = str(_folder(tmp_path, lora, head))
    common = {"adapter": folder, "dtype": "float32", "max_input_tokens": MAX_INPUT_TOKENS}
    v, v_ident = scored(VLLMBackend(kv_cache_bytes=KV, **common), TEXTS)
    t, t_ident = scored(TransformersBackend(**common), TEXTS)
    assert v_ident == t_ident
    assert list(v.windows) == list(t.windows) and v.windows[2] > 1  # the long input read window by window
    diff = np.abs(v.window_p_unsafe - t.window_p_unsafe)  # every window, not only each input's highest
    print(f"\nlora={lora}: max |p_unsafe diff| {diff.max():.2e} over {len(diff)} windows")
    assert diff.max() < 1e-4, diff
    assert np.ptp(v.window_p_unsafe) > 0.2  # the head's reading, not a constant
    if lora:  # the head was fitted on the shipped LoRA's states: a threat reads unsafe, a question safe
        assert v.p_unsafe[1] > 0.5 > v.p_unsafe[0]


def test_a_model_class_without_intermediate_states_is_refused(vllm_env) -> None:  # type: ignore[no-untyped-def]
    from guardcal.backends.vllm_readout import register_readout
    from guardcal.errors import BackendError

    assert register_readout("LlamaForCausalLM") == "GuardcalReadoutLlamaForCausalLM"  # twice: registered once
    assert register_readout("LlamaForCausalLM") == "GuardcalReadoutLlamaForCausalLM"
    with pytest.raises(BackendError, match="no EAGLE-3 aux hidden states.*--backend transformers"):
        register_readout("GPT2LMHeadModel")
    with pytest.raises(BackendError, match="no model class for NoSuchForCausalLM.*--backend transformers"):
        register_readout("NoSuchForCausalLM")


def test_a_head_in_reasoning_mode_is_refused(vllm_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = VLLMBackend(adapter=str(_folder(tmp_path, lora=False)), reasoning=True, kv_cache_bytes=KV)
    with pytest.raises(ConfigError, match="without --reasoning"):
        asyncio.run(backend.start())
