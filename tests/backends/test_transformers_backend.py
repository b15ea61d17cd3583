"""The transformers serving backend on the real default model."""

import asyncio

import numpy as np
import pytest

from guardcal.backends.hf import HFScorer
from guardcal.backends.transformers_backend import TransformersBackend
from guardcal.errors import BackendError

TEXTS = ["How do I bake bread?", "I will find you and hurt you", "hello there", "Write a poem about cats"]


def test_concurrent_requests_are_micro_batched_and_match_the_scorer(default_model):
    async def run():
        b = TransformersBackend(max_batch=8, max_wait_ms=50, dtype="float32")
        await b.start()
        calls = []
        original = b.scorer.score_split  # one call per micro-batch: every window of its requests
        b.scorer.score_split = lambda parts, *a, **k: calls.append(len(parts)) or original(parts, *a, **k)
        try:
            results = await asyncio.gather(*(b.score([t]) for t in TEXTS))
        finally:
            await b.aclose()
        return b, calls, results

    b, calls, results = asyncio.run(run())
    assert sum(calls) == len(TEXTS) and len(calls) < len(TEXTS)  # batched, nothing lost
    direct = HFScorer(default_model.model, default_model.tokenizer).score(TEXTS).scores
    got = np.array([r.p_unsafe_norm[0] for r in results])
    np.testing.assert_allclose(got, direct.p_unsafe_norm, rtol=1e-4, atol=1e-5)
    assert b.scorer.prefix_status.startswith("on:") and b.scorer.rows_cached >= len(TEXTS)  # served from the cache
    ident = b.identity()
    assert ident["model_id"].startswith("default:") and ident["adapter_hash"] is None and ident["mode"] == "direct"
    assert not b.ready


def test_score_before_start_fails_clearly():
    with pytest.raises(BackendError, match="start"):
        asyncio.run(TransformersBackend().score(["x"]))


def test_auto_dtype_is_bf16_where_the_cpu_has_it():
    from guardcal.backends.precision import cpu_supports_bf16

    assert TransformersBackend().dtype == ("bfloat16" if cpu_supports_bf16() else "float32")
    assert TransformersBackend(dtype="float32").dtype == "float32"
