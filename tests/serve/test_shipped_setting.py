"""The shipped bundle brings the adapter, mode and reasoning budget it was fitted for."""

from __future__ import annotations

import argparse
import json

import pytest

import guardcal.models.shipped as shipped
import guardcal.serve.settings as settings_mod
from guardcal.cli import shipped_bundle_setting
from guardcal.errors import ConfigError
from guardcal.models.loading import adapter_fingerprint
from guardcal.serve.settings import ServeSettings


@pytest.fixture
def shipped_files(tmp_path, monkeypatch):
    """A shipped adapter and a reasoning-mode bundle fitted for it, with a 16-token budget."""
    adapter = tmp_path / "default_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    bundle = tmp_path / "default_bundle.json"
    data = {
        "mode": "reasoning",
        "adapter_hash": adapter_fingerprint(adapter),
        "extra": {"max_new_tokens": 16, "dtype": "float32"},
    }
    bundle.write_text(json.dumps(data))
    for module in (shipped, settings_mod):
        monkeypatch.setattr(module, "DEFAULT_BUNDLE", bundle)
    monkeypatch.setattr(shipped, "DEFAULT_ADAPTER", adapter)
    for name in ("ADAPTER", "REASONING", "MAX_NEW_TOKENS", "BUNDLE", "MODEL", "DTYPE"):
        monkeypatch.delenv(f"GUARDCAL_{name}", raising=False)
    return bundle, data


def test_default_model_takes_the_bundles_setting(shipped_files):
    s = ServeSettings()
    assert (s.bundle, s.adapter, s.reasoning, s.max_new_tokens) == ("default", "default", True, 16)
    assert s.dtype == "float32"  # scored the way the bundle was fitted
    assert ServeSettings(dtype="bfloat16").dtype == "bfloat16"
    assert ServeSettings(bundle="none", escalate_below=0.9).dtype == "auto"


@pytest.mark.parametrize("setting", [{"reasoning": False}, {"model": "/models/qwen3"}, {"adapter": None}])
def test_a_different_setting_refuses_the_implicit_bundle(shipped_files, setting):
    with pytest.raises(ValueError, match="--bundle none --escalate-below P"):  # pydantic's ValidationError
        ServeSettings(**setting)
    assert ServeSettings(bundle="none", escalate_below=0.95, **setting).bundle is None


def test_a_named_bundle_is_kept_for_the_start_up_check(shipped_files):
    s = ServeSettings(reasoning=False, bundle="default")
    assert (s.bundle, s.adapter, s.reasoning) == ("default", "default", False)


def test_environment_counts_as_explicit(shipped_files, monkeypatch):
    monkeypatch.setenv("GUARDCAL_MAX_NEW_TOKENS", "64")
    s = ServeSettings()
    assert (s.bundle, s.max_new_tokens) == ("default", 64)


def test_a_bundle_for_a_foreign_adapter_is_refused(shipped_files):
    bundle, data = shipped_files
    bundle.write_text(json.dumps({**data, "adapter_hash": "sha256:0000000000000000"}))
    with pytest.raises(ConfigError, match="not the shipped default adapter"):
        ServeSettings.load()


def test_evaluate_flags_follow_the_shipped_bundle(shipped_files):
    def ns(**kw):
        base = {"model": "default", "adapter": None, "reasoning": None, "max_new_tokens": None, "bundle": "default"}
        return argparse.Namespace(**{**base, **kw})

    assert shipped_bundle_setting(ns()) == ("default", True, 16)
    assert shipped_bundle_setting(ns(max_new_tokens=32)) == ("default", True, 32)
    assert shipped_bundle_setting(ns(bundle=None)) == (None, False, 256)
    assert shipped_bundle_setting(ns(model="/m", reasoning=True)) == (None, True, 256)
