"""A pooled head in an adapter folder (``core.pooled_head``): found by the loaders, read by the shared
scorer in place of the decision token (windows and all), and refused where it cannot be used, on the
real default model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from guardcal.core.pooled_head import FILENAME, PooledHead, input_span
from guardcal.core.prompt import PromptTemplate
from guardcal.errors import ConfigError, ModelError
from guardcal.models.loading import adapter_fingerprint, check_adapter_dir, has_lora, load_head, load_model
from guardcal.scoring.pooled import pooled_features
from guardcal.scoring.scorer import HFScorer

READOUTS = (("mean_normed", 15), ("mean", 20))


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory, default_model):  # type: ignore[no-untyped-def]
    """A head-only adapter folder with a random head of the default model's width."""
    width = default_model.model.config.hidden_size * len(READOUTS)
    rng = np.random.default_rng(0)
    head = PooledHead(READOUTS, rng.normal(size=width) / 10, rng.normal(size=width), rng.uniform(1, 3, width), -0.5)
    folder = tmp_path_factory.mktemp("head")
    head.save(folder / FILENAME)
    return folder


def test_loaders_find_a_head_only_folder(head_dir) -> None:  # type: ignore[no-untyped-def]
    assert check_adapter_dir(head_dir) == head_dir and not has_lora(head_dir)
    head = load_head(head_dir)
    assert head is not None and head.readouts == READOUTS
    assert load_head(None) is None
    assert adapter_fingerprint(head_dir) != adapter_fingerprint("default")


def test_a_lora_only_folder_has_no_head_and_hashes_its_lora_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A folder without a head (the shipped LoRA's files alone) hashes as before heads existed: its config
    and weights only. The shipped default holds a head too, so its hash covers the head."""
    import hashlib
    import shutil

    from guardcal.assets import DEFAULT_ADAPTER

    names = ("adapter_config.json", "adapter_model.safetensors")
    for name in names:
        shutil.copyfile(DEFAULT_ADAPTER / name, tmp_path / name)
    assert load_head(tmp_path) is None and has_lora(tmp_path)
    want = hashlib.sha256(b"".join((tmp_path / name).read_bytes() for name in names)).hexdigest()[:16]
    assert adapter_fingerprint(tmp_path) == "sha256:" + want
    assert load_head("default") is not None and adapter_fingerprint("default") != adapter_fingerprint(tmp_path)


def test_the_shipped_bundle_matches_the_shipped_adapter() -> None:
    """The shipped bundle was fitted on the shipped folder, head included."""
    import json

    from guardcal.assets import DEFAULT_BUNDLE

    assert adapter_fingerprint("default") == json.loads(DEFAULT_BUNDLE.read_text())["adapter_hash"]


def test_scorer_reads_the_head_not_the_decision_token(default_model, head_dir) -> None:  # type: ignore[no-untyped-def]
    head = load_head(head_dir)
    template = PromptTemplate()
    scorer = HFScorer(default_model.model, default_model.tokenizer, template, head=head, prefix_cache=True)
    assert scorer.prefix() is None and "pooled head" in scorer.prefix_status
    texts = ["I will hurt you", "a recipe for bread", "ok"]
    got = scorer.score(texts).scores
    spans = [input_span(scorer.template, default_model.tokenizer, t) for t in texts]
    want = head.logits(pooled_features(default_model.model, spans, READOUTS))
    assert got.logit == pytest.approx(want, abs=1e-4)  # want ran as one padded forward
    assert got.label_mass == pytest.approx(np.ones(3)) and got.decided.all()
    plain = HFScorer(default_model.model, default_model.tokenizer, template).score(texts).scores
    assert not plain.logit == pytest.approx(got.logit, abs=1e-2)


def test_a_long_input_reads_as_its_highest_window(default_model, head_dir) -> None:  # type: ignore[no-untyped-def]
    head = load_head(head_dir)
    scorer = HFScorer(default_model.model, default_model.tokenizer, PromptTemplate(), head=head, max_input_tokens=32)
    text = "the weather is mild today and " * 6 + "I will find you and hurt you badly " * 3
    result = scorer.score([text]).scores
    windows = scorer.split([text])[0].texts
    assert len(windows) > 1
    each = scorer.score(windows).scores.p_unsafe
    assert result.p_unsafe[0] == pytest.approx(each.max(), abs=1e-9)


def test_evaluate_and_serve_load_the_head(default_model, head_dir) -> None:  # type: ignore[no-untyped-def]
    from guardcal.backends.transformers_backend import TransformersBackend

    loaded = load_model("default", head_dir)
    assert loaded.head is not None and loaded.head.readouts == READOUTS

    async def served() -> tuple[np.ndarray, dict]:  # type: ignore[type-arg]
        backend = TransformersBackend(adapter=str(head_dir), dtype="float32")
        await backend.start()
        try:
            return (await backend.score(["I will hurt you"])).logit, backend.identity()
        finally:
            await backend.aclose()

    logit, identity = asyncio.run(served())
    scorer = HFScorer(loaded.model, loaded.tokenizer, PromptTemplate(), head=loaded.head)
    assert logit == pytest.approx(scorer.score(["I will hurt you"]).scores.logit, abs=1e-6)
    assert identity["adapter_hash"] == adapter_fingerprint(head_dir)


def test_where_a_head_cannot_be_used_it_is_refused(head_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from guardcal.train.config import TrainConfig

    with pytest.raises(ModelError, match="direct-mode"):
        HFScorer(None, None, PromptTemplate(mode="reasoning"), head=load_head(head_dir))
    with pytest.raises(ConfigError, match="only a pooled head"):
        TrainConfig(method="sft", adapter=str(head_dir))
    wide = PooledHead((("mean", 15),), np.ones(8), np.zeros(8), np.ones(8), 0.0)
    wide.save(tmp_path / FILENAME)
    with pytest.raises(ModelError, match="width 8"):
        load_model("default", tmp_path)
    with pytest.raises(ModelError, match="nor a pooled head"):
        check_adapter_dir(tmp_path / "nothing")


def test_padded_forwards_read_as_one_prompt_at_a_time(default_model) -> None:  # type: ignore[no-untyped-def]
    """Right padding reaches no mean and no last state: a padded forward's features equal single-prompt ones."""
    texts = ["ok", "I will hurt you", "a recipe for bread with flour, water, salt and a long rest " * 6, "é"]
    template = PromptTemplate().bind(default_model.tokenizer)
    readouts = (("last", 30), ("mean", 10))
    spans = [input_span(template, default_model.tokenizer, t) for t in texts]
    together = pooled_features(default_model.model, spans, readouts, pad_id=default_model.tokenizer.pad_token_id)
    apart = np.concatenate([pooled_features(default_model.model, [s], readouts) for s in spans])
    assert together == pytest.approx(apart, abs=1e-4)
