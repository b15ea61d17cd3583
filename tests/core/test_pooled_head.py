"""guardcal.scoring.pooled_head: the head's file round-trips and refuses what is not a head, its logits
are the fitted logistic regression's, and its features are the means over the input's own tokens of
the real default model's states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guardcal.core.pooled_head import PooledHead, input_span
from guardcal.core.profiles import default_profile
from guardcal.core.prompt import PromptTemplate
from guardcal.errors import ModelError
from guardcal.scoring.pooled import pooled_features


def _head(readouts=(("mean_normed", 15),), width: int = 4, seed: int = 0) -> PooledHead:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    n = width * len(readouts)
    return PooledHead(tuple(readouts), rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2, n), 0.25)


def test_save_and_load_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    head = _head((("mean", 10), ("mean_normed", 20)))
    path = head.save(tmp_path / "h.safetensors")
    back = PooledHead.load(path)
    assert back.readouts == (("mean", 10), ("mean_normed", 20))
    x = np.random.default_rng(1).normal(size=(3, 8))
    assert back.logits(x) == pytest.approx(head.logits(x), rel=1e-5, abs=1e-5)  # stored as float32


def test_logits_match_the_fitted_pipeline() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)), rng.integers(0, 2, 80)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(x, y)
    scaler, lr = fitted[0], fitted[1]
    head = PooledHead((("mean", 1), ("mean", 2)), lr.coef_[0], scaler.mean_, scaler.scale_, float(lr.intercept_[0]))
    assert head.logits(x) == pytest.approx(fitted.decision_function(x), abs=1e-9)
    scores = head.scores(x)
    assert scores.p_unsafe == pytest.approx(fitted.predict_proba(x)[:, 1], abs=1e-9)
    assert scores.label_mass == pytest.approx(np.ones(80))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h: {**h, "readouts": (("max", 30),)}, "pools in"),
        (lambda h: {**h, "readouts": ()}, "pools in"),
        (lambda h: {**h, "scale": np.zeros(4)}, "scales positive"),
        (lambda h: {**h, "center": np.zeros(3)}, "one length"),
        (lambda h: {**h, "bias": float("nan")}, "finite"),
    ],
)
def test_a_malformed_head_is_refused(change, match: str) -> None:  # type: ignore[no-untyped-def]
    h = _head()
    fields = {"readouts": h.readouts, "weight": h.weight, "center": h.center, "scale": h.scale, "bias": h.bias}
    with pytest.raises(ModelError, match=match):
        PooledHead(**change(fields))


def test_load_refuses_other_files_with_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.numpy import save_file

    with pytest.raises(ModelError, match="no pooled head at"):
        PooledHead.load(tmp_path / "missing.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ModelError, match="not a safetensors file"):
        PooledHead.load(tmp_path / "pickle.safetensors")
    save_file({"weight": np.ones(2, dtype=np.float32)}, str(tmp_path / "lora.safetensors"), metadata={"x": "1"})
    with pytest.raises(ModelError, match="not a guardcal pooled head"):
        PooledHead.load(tmp_path / "lora.safetensors")
    meta = {"format": "guardcal-pooled-head/1", "readouts": json.dumps([["mean", 1]])}
    save_file({"weight": np.ones(2, dtype=np.float32)}, str(tmp_path / "partial.safetensors"), metadata=meta)
    with pytest.raises(ModelError, match="tensors weight, center, scale and bias"):
        PooledHead.load(tmp_path / "partial.safetensors")


@pytest.mark.parametrize("text", ["I will hurt you", "é", "a b c " * 40])
def test_features_are_means_over_the_input_tokens(default_model, text: str) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tok = default_model.model, default_model.tokenizer
    template = PromptTemplate(mode="direct", profile=default_profile())
    ids, start, end = input_span(template, tok, text)
    assert 0 < start < end < len(ids)
    readouts = (("mean", 15), ("mean_normed", 15), ("mean_normed", 30), ("last", 30))
    got = pooled_features(model, [(ids, start, end)], readouts)
    width = model.config.hidden_size
    assert got.shape == (1, 4 * width)
    with torch.inference_mode():
        states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        normed = model.get_decoder().norm(states[15][0, start:end]).mean(0).numpy()
    assert got[0, :width] == pytest.approx(states[15][0, start:end].mean(0).numpy(), abs=1e-4)
    assert got[0, width : 2 * width] == pytest.approx(normed, abs=1e-4)
    assert got[0, 2 * width : 3 * width] == pytest.approx(states[30][0, start:end].mean(0).numpy(), abs=1e-4)
    assert got[0, 3 * width :] == pytest.approx(states[30][0, -1].numpy(), abs=1e-4)
