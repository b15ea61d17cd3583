"""Packed decision reads on the prefix cache (scoring.packed), on the real default model and real inputs."""

import random

import numpy as np
import pytest

from guardcal.core.prompt import PromptTemplate
from guardcal.data.loaders import load_dataset
from guardcal.errors import BackendError
from guardcal.models.loading import load_model
from guardcal.scoring import scorer as scorer_module
from guardcal.scoring.packed import PACKED_ATTENTION, _segment_mask, attention_implementation, forward_packed
from guardcal.scoring.scorer import HFScorer

TOL = {"rtol": 1e-4, "atol": 2e-6}


@pytest.fixture(scope="module")
def mixed(data_dir):
    """Short XSTest prompts, OpenAI Moderation texts up to a few hundred tokens, and edge cases."""
    rng = random.Random(11)
    xs = [e.text for e in rng.sample(load_dataset("xstest", data_dir), 5)]
    oai = sorted((e.text for e in load_dataset("openai-moderation:test", data_dir)), key=len)
    return [*xs, oai[len(oai) // 2], oai[int(len(oai) * 0.95)], "", '"', "ok"]


def test_segment_mask_sees_the_prefix_and_the_request_causally():
    mask = _segment_mask(3, 2).int().tolist()
    assert mask == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_packed_equals_padded_and_full_forward(default_model, mixed):
    model, tok = default_model.model, default_model.tokenizer
    full = HFScorer(model, tok, batch_size=4).score(mixed).scores
    padded = HFScorer(model, tok, batch_size=4, prefix_cache=True, packing=False)
    packed = HFScorer(model, tok, batch_size=16, prefix_cache=True)
    got_padded, got_packed = padded.score(mixed).scores, packed.score(mixed).scores
    assert packed.prefix_status.endswith(", packed") and packed.packing, packed.prefix_status
    assert padded.prefix_status.endswith(", padded") and not padded.packing, padded.prefix_status
    assert attention_implementation(model) == PACKED_ATTENTION
    assert packed.rows_cached == len(mixed) and packed.rows_full == 0  # really used, no silent fallback
    for got in (got_padded, got_packed):
        np.testing.assert_allclose(got.p_unsafe, full.p_unsafe, **TOL)
        np.testing.assert_allclose(got.p_safe, full.p_safe, **TOL)
    # the full forward of a model switched to packed attention is still the plain SDPA forward
    fresh = load_model("default")
    np.testing.assert_allclose(HFScorer(fresh.model, tok).score(mixed).scores.p_unsafe, full.p_unsafe, **TOL)


def test_packed_batches_are_cut_by_size_only(default_model):
    s = HFScorer(default_model.model, default_model.tokenizer, batch_size=3, prefix_cache=True)
    assert s.prefix() is not None and s.packing
    lengths = [4000, 40, 39, 38, 37]
    assert s._chunks([0, 1, 2, 3, 4], lengths, by_length=False) == [[0, 1, 2], [3, 4]]
    assert s._chunks([0, 1, 2, 3, 4], lengths) == [[0], [1, 2, 3], [4]]  # padded reads still split by length


def test_a_packed_read_that_disagrees_falls_back_to_padding(default_model, monkeypatch):
    model, tok = default_model.model, default_model.tokenizer
    real = scorer_module.forward_packed

    def wrong(model, prefix, rows):
        return real(model, prefix, list(reversed(rows)))  # the rows' results swapped: not the full forward

    monkeypatch.setattr(scorer_module, "forward_packed", wrong)
    s = HFScorer(model, tok, prefix_cache=True)
    assert s.prefix() is not None and not s.packing
    assert "padded (packing off: packed and full forwards differ" in s.prefix_status, s.prefix_status
    assert attention_implementation(model) == "sdpa"  # switched back
    texts = ["hello there", "I will find you and hurt you"]
    np.testing.assert_allclose(
        s.score(texts).scores.p_unsafe, HFScorer(model, tok).score(texts).scores.p_unsafe, **TOL
    )


def test_packing_only_replaces_sdpa_and_only_in_direct_mode(default_model):
    eager = load_model("default")
    eager.model.set_attn_implementation("eager")
    s = HFScorer(eager.model, eager.tokenizer, prefix_cache=True)
    assert s.prefix() is not None and not s.packing
    assert "packing off: the model's attention is 'eager'" in s.prefix_status
    rows = eager.tokenizer([s.template.render("hello")], add_special_tokens=False)["input_ids"]
    with pytest.raises(BackendError, match="attention is 'eager'"):  # plain attention would mix the requests
        forward_packed(eager.model, s.prefix(), rows)
    reasoning = HFScorer(
        default_model.model, default_model.tokenizer, PromptTemplate(mode="reasoning"), prefix_cache=True
    )
    assert not reasoning.packing  # reasoning reads run on the generation's cache, not packed
