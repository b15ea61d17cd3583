"""Serving uncalibrated is never silent (issue #20, item 3).

A setting the shipped bundle was not fitted for (another model, adapter or mode) is refused at start-up
with the fix, instead of quietly auto-deciding raw probabilities; serving without a bundle needs an
explicit ``--escalate-below``. Bundles for models other than the default are bound to the weights'
safetensors digest, not to the path typed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import fixed_thresholds
from guardcal.errors import ConfigError
from guardcal.models.loading import model_identity, weights_fingerprint
from guardcal.serve.settings import ServeSettings


def fake_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(b"not read by settings")
    return folder


def fake_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.mark.parametrize(
    "setting",
    [
        {"model": "/models/my-guard"},
        {"reasoning": True},
        {"adapter": "ADAPTER"},
    ],
)
def test_setting_the_shipped_bundle_does_not_fit_is_refused(setting, tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDCAL_HOME", str(tmp_path / "home"))
    if setting.get("adapter") == "ADAPTER":
        setting = {"adapter": str(fake_adapter(tmp_path / "other-adapter"))}
    with pytest.raises(ConfigError) as err:
        ServeSettings.load(outbox=tmp_path / "o.sqlite3", **setting)
    message = str(err.value)
    assert "guardcal calibrate" in message and "--bundle none --escalate-below" in message


def test_no_bundle_needs_an_explicit_threshold(tmp_path):
    with pytest.raises(ConfigError, match="--bundle none --escalate-below P"):
        ServeSettings.load(outbox=tmp_path / "o.sqlite3", bundle="none")
    settings = ServeSettings(outbox=tmp_path / "o.sqlite3", bundle="none", escalate_below=0.99)
    assert settings.bundle is None and settings.escalate_below == 0.99


def test_explicit_uncalibrated_serving_of_another_model_is_allowed(tmp_path):
    settings = ServeSettings(outbox=tmp_path / "o.sqlite3", model="/models/x", bundle="none", escalate_below=1.0)
    assert settings.bundle is None


def test_model_identity_is_bound_to_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDCAL_HOME", str(tmp_path / "home"))
    a = fake_model(tmp_path / "guard", b"weights-v1")
    same_elsewhere = fake_model(tmp_path / "copy" / "other-name", b"weights-v1")
    assert model_identity(str(a)) == model_identity(str(same_elsewhere)) == "weights:" + weights_fingerprint(a)
    fitted = CalibrationBundle.from_fitted(
        _identity_calibrator(),
        fixed_thresholds(0.9),
        model_id=model_identity(str(a)),
        adapter_hash=None,
        mode="direct",
        prompt_fingerprint="sha256:p",
        label_spec={"labels": ["safe", "unsafe"], "surfaces": ["Safe", "Unsafe"], "token_ids": [[1], [2]]},
    )
    (a / "model.safetensors").write_bytes(b"weights-v2, retrained in place")
    changed = model_identity(str(a))
    assert changed != fitted.model_id, "new weights under the same path must not reuse the old bundle"
    with pytest.raises(Exception, match="model"):
        fitted.check_compatible(
            model_id=changed,
            adapter_hash=None,
            mode="direct",
            prompt_fingerprint="sha256:p",
            label_spec=fitted.label_spec,
        )


def test_weights_without_safetensors_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(Exception, match="safetensors"):
        weights_fingerprint(folder)


def _identity_calibrator():
    from guardcal.calibrate.base import make_calibrator

    return make_calibrator("platt").fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
