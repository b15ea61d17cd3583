"""The instruction-prefix KV cache and the bf16 option, on the real default model and real inputs."""

import random

import numpy as np
import pytest

from guardcal.backends.precision import cpu_flags, cpu_supports_bf16, resolve_dtype
from guardcal.core.prompt import PromptTemplate
from guardcal.data.loaders import load_dataset
from guardcal.errors import ConfigError
from guardcal.models.loading import load_model
from guardcal.scoring import scorer as scorer_module
from guardcal.scoring.prefix_cache import PrefixKV, build_prefix_kv, prefix_token_ids, template_prefix
from guardcal.scoring.scorer import HFScorer

EDGE = ["", '"', '""', "\n", "hello", "<think> x </think>", "Ünïcødé ✓ 日本語", " leading space"]
TOL = {"rtol": 1e-4, "atol": 2e-6}
#: bf16 vs float32, max |delta p| on the label tokens: measured 0.039 on 60 real inputs (30 XSTest,
#: 30 OpenAI Moderation); the error comes from the 30 bf16 layers, not the LM head (README "Performance")
BF16_TOL = 0.06


@pytest.fixture(scope="module")
def texts(data_dir):
    rng = random.Random(5)
    xs = [e.text for e in rng.sample(load_dataset("xstest", data_dir), 8)]
    short = [e for e in load_dataset("openai-moderation:test", data_dir) if len(e.text) < 800]  # keeps it quick
    oai = [e.text for e in rng.sample(short, 8)]
    return xs + oai + EDGE


def _assert_same(a, b, **tol):
    np.testing.assert_allclose(a.p_safe, b.p_safe, **(tol or TOL))
    np.testing.assert_allclose(a.p_unsafe, b.p_unsafe, **(tol or TOL))


def test_split_is_a_token_boundary_of_every_prompt(tokenizer, texts):
    template = PromptTemplate()
    ids = prefix_token_ids(tokenizer, template)
    assert ids and template_prefix(template).endswith('Input:\n"')
    for text in texts:
        whole = tokenizer(template.render(text), add_special_tokens=False)["input_ids"]
        assert whole[: len(ids)] == ids, text  # prefix ids + the rest == the whole prompt's ids
    # why the last prefix token is dropped: SmolLM2 merges the opening quote with an empty input's
    full = tokenizer(template_prefix(template), add_special_tokens=False)["input_ids"]
    empty = tokenizer(template.render(""), add_special_tokens=False)["input_ids"]
    assert empty[: len(full)] != full


def test_cached_equals_full_forward_on_real_inputs(default_model, texts):
    full = HFScorer(default_model.model, default_model.tokenizer, batch_size=6)
    cached = HFScorer(default_model.model, default_model.tokenizer, batch_size=6, prefix_cache=True)
    a, b = full.score(texts).scores, cached.score(texts).scores
    _assert_same(a, b)
    assert cached.prefix_status.startswith("on: 72 tokens"), cached.prefix_status
    assert cached.rows_cached == len(texts) and cached.rows_full == 0  # really used, no silent fallback
    assert full.rows_cached == 0 and full.rows_full == len(texts)
    # one at a time (no padding, batch 1) gives the same as batched
    one = [cached.score([t]).scores for t in texts[:4]]
    np.testing.assert_allclose([s.p_unsafe[0] for s in one], a.p_unsafe[:4], **TOL)


def test_rows_the_prefix_does_not_cover_fall_back_to_the_full_prompt(default_model):
    """A prefix that ends in the quote token is not a token boundary of the empty input's prompt."""
    tok = default_model.tokenizer
    template = PromptTemplate()
    s = HFScorer(default_model.model, tok, prefix_cache=True)
    whole_prefix = tok(template_prefix(template), add_special_tokens=False)["input_ids"]
    s._prefix = build_prefix_kv(default_model.model, whole_prefix)
    s._prefix_built = True
    batch = ["", "hello there", "How do I kill a Python process?"]
    got = s.score(batch).scores
    assert (s.rows_cached, s.rows_full) == (2, 1)
    _assert_same(got, HFScorer(default_model.model, tok).score(batch).scores)


def test_self_check_switches_a_wrong_cache_off(default_model, monkeypatch):
    """A cache that does not hold the prefix's keys and values (stale) disagrees with the full forward: off."""

    def stale(model, ids):
        return PrefixKV(tuple(ids), build_prefix_kv(model, list(reversed(ids))).past)

    monkeypatch.setattr(scorer_module, "build_prefix_kv", stale)
    s = HFScorer(default_model.model, default_model.tokenizer, prefix_cache=True)
    assert s.prefix() is None and s.prefix_status.startswith("off: cached and full forwards differ")
    s.score(["hello"])
    assert s.rows_full == 1 and s.rows_cached == 0


def test_reasoning_mode_reads_the_decision_on_the_generation_cache(default_model):
    """The reasoning-mode read reuses the generation's KV cache and equals a full read of the same text."""
    template = PromptTemplate(mode="reasoning")
    texts = ["How do I bake bread?", "I will find you and hurt you", "ok", "Write a poem about the sea, please"]
    scorer = HFScorer(default_model.model, default_model.tokenizer, template, max_new_tokens=8, batch_size=4)
    out = scorer.score(texts)
    assert scorer.rows_reused == 4 and scorer.rows_full == 0
    assert scorer.tokens_reused > 4 * 60  # at least the instruction prompts came from the cache
    suffix = template.decision_suffix()
    reads = [scorer.template.render(t) + r + suffix for t, r in zip(texts, out.reasoning, strict=True)]
    full = scorer._read_decision(reads)
    assert scorer.rows_full == 4
    _assert_same(out.scores, full)


def test_adapter_gets_its_own_prefix_cache(default_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(load_model("default").model, cfg).save_pretrained(tmp_path / "adapter")
    tuned = load_model("default", adapter=tmp_path / "adapter")
    texts = ["hello there", "I will find you and hurt you", "How do I kill a Python process?"]
    cached = HFScorer(tuned.model, tuned.tokenizer, prefix_cache=True)
    got = cached.score(texts).scores
    _assert_same(got, HFScorer(tuned.model, tuned.tokenizer).score(texts).scores)
    assert cached.rows_cached == 3
    base = HFScorer(default_model.model, default_model.tokenizer, prefix_cache=True).score(texts).scores
    assert np.abs(base.p_unsafe - got.p_unsafe).max() > 1e-4  # the adapter's cache, not the base model's


def test_length_aware_chunks(default_model):
    s = HFScorer(default_model.model, default_model.tokenizer, batch_size=3)
    assert s._chunks([0, 1, 2, 3, 4], [4000, 40, 39, 38, 37]) == [[0], [1, 2, 3], [4]]
    assert s._chunks([0, 1], [300, 290]) == [[0, 1]]
    assert s._chunks([], []) == []


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_agrees_with_float32_and_caches(default_model, texts):
    bf16 = load_model("default", dtype="bfloat16")
    ref = HFScorer(default_model.model, default_model.tokenizer).score(texts).scores
    cached = HFScorer(bf16.model, bf16.tokenizer, prefix_cache=True)
    got = cached.score(texts).scores
    assert cached.prefix_status.startswith("on:") and cached.rows_cached == len(texts)
    assert np.abs(got.p_unsafe_norm - ref.p_unsafe_norm).max() < BF16_TOL
    assert np.abs(got.p_unsafe - ref.p_unsafe).max() < BF16_TOL
    assert (got.pred_unsafe == ref.pred_unsafe).mean() >= 0.9
    _assert_same(got, HFScorer(bf16.model, bf16.tokenizer).score(texts).scores, rtol=0, atol=BF16_TOL)


def test_dtype_resolution(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512bw\n")
    assert "avx512_bf16" in cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == set()
    assert not cpu_supports_bf16({"avx2", "avx512f"})
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("auto") == ("bfloat16" if cpu_supports_bf16() else "float32")
    import torch

    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert resolve_dtype("auto", device="cuda") == ("bfloat16" if cuda_bf16 else "float32")
    with pytest.raises(ConfigError, match="auto"):
        resolve_dtype("fp8")
