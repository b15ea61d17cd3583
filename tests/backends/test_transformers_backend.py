"""The transformers serving backend on the real default model."""

import asyncio

import numpy as np
import pytest

from guardcal.backends.transformers_backend import TransformersBackend
from guardcal.errors import BackendError
from guardcal.scoring.scorer import HFScorer

TEXTS = ["How do I bake bread?", "I will find you and hurt you", "hello there", "Write a poem about cats"]


def test_concurrent_requests_are_micro_batched_and_match_the_scorer(default_model):
    async def run():
        b = TransformersBackend(forward_batch=8, max_wait_ms=50, dtype="float32")
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


def test_short_inputs_beside_a_long_one_stay_one_cached_packed_row_each(default_model):
    """Windowing adds work only for inputs over the budget: a micro-batch of short requests and one
    long request runs as one packed read on the prefix cache, one row per short input (the text as
    given) plus one per window of the long one; nothing falls back to a full or padded forward."""
    from guardcal.scoring import scorer as scorer_module

    budget = 48
    tok = default_model.tokenizer
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    long_tokens = len(tok.encode(long_text, add_special_tokens=False))
    short = [t for t in TEXTS if len(tok.encode(t, add_special_tokens=False)) <= budget]
    assert short == TEXTS and long_tokens > budget

    async def run():
        b = TransformersBackend(forward_batch=16, max_wait_ms=200, dtype="float32", max_input_tokens=budget)
        await b.start()
        assert b.scorer.packing, b.scorer.prefix_status
        cached0, full0 = b.scorer.rows_cached, b.scorer.rows_full
        reads, splits = [], []
        original_read, original_split = scorer_module.forward_packed, b.scorer.score_split
        scorer_module.forward_packed = lambda model, prefix, rows: (
            reads.append(len(rows)) or original_read(model, prefix, rows)
        )
        b.scorer.score_split = lambda parts, *a, **k: splits.append(len(parts)) or original_split(parts, *a, **k)
        try:
            results = await asyncio.gather(*(b.score([t]) for t in [*TEXTS, long_text]))
        finally:
            scorer_module.forward_packed = original_read
            await b.aclose()
        return b, results, reads, splits, b.scorer.rows_cached - cached0, b.scorer.rows_full - full0

    b, results, reads, splits, cached, full = asyncio.run(run())
    windows = b.scorer.windows.count(long_tokens)
    assert windows >= 2
    assert splits == [len(TEXTS) + 1]  # one micro-batch for all five requests
    assert reads == [len(TEXTS) + windows]  # one packed read: a row per short input, one per window
    assert (cached, full) == (len(TEXTS) + windows, 0)  # every row on the prefix cache, no full forward
    assert [int(r.windows[0]) for r in results] == [1] * len(TEXTS) + [windows]
    direct = HFScorer(default_model.model, tok, max_input_tokens=budget).score(TEXTS).scores
    got = np.array([r.p_unsafe_norm[0] for r in results[: len(TEXTS)]])
    np.testing.assert_allclose(got, direct.p_unsafe_norm, rtol=1e-4, atol=1e-5)  # short inputs: scored as given
