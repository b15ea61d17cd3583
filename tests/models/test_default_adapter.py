"""The shipped default adapter (the issue-21 guard): v4's LoRA (a probe readout, SFT, then SFT on contrast
requests) and a pooled head fitted on its hidden states, read in place of the decision token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from guardcal.assets import DEFAULT_ADAPTER
from guardcal.core.pooled_head import PooledHead
from guardcal.models.loading import adapter_fingerprint, check_adapter_dir, resolve_adapter

RESULTS = Path(__file__).parents[2] / "results" / "guard"
SHIPPED_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "train_config.json",
    "probe_readout.json",
    "training_data.json",
    "base_train_config.json",  # the run this one went on from (--adapter default): v4's
    "base_training_data.json",  # v4's training mix
    "pooled_head.safetensors",
    "head_fit.json",
}


def test_default_resolves_to_the_shipped_adapter_folder():
    assert resolve_adapter("default") == DEFAULT_ADAPTER
    assert check_adapter_dir("default") == DEFAULT_ADAPTER


def test_the_shipped_adapter_is_small_safe_and_what_the_readme_says():
    files = {p.name for p in DEFAULT_ADAPTER.iterdir() if p.is_file()}
    assert files == SHIPPED_FILES  # no pickle (.bin/.pt), no optimiser state, no tokenizer copy
    assert sum((DEFAULT_ADAPTER / f).stat().st_size for f in files) < 25 * 2**20
    lora = json.loads((DEFAULT_ADAPTER / "adapter_config.json").read_text())
    assert (lora["r"], lora["lora_alpha"], lora["peft_type"]) == (16, 32, "LORA")
    assert lora["rank_pattern"] == {"lm_head": 2}  # the probe readout (+ label-mass boost) on the LM head
    # the head: fitted on v4's hidden states (--adapter default), the OpenAI rows weighing twice the requests
    cfg = json.loads((DEFAULT_ADAPTER / "train_config.json").read_text())
    assert (cfg["method"], cfg["adapter"], cfg["head_domain_prefix"], cfg["head_domain_weight"]) == (
        "head", "default", "oai-", 2.0,
    )  # fmt: skip
    head = PooledHead.load(DEFAULT_ADAPTER / "pooled_head.safetensors")
    assert head.readouts == (("mean", 10), ("mean", 15), ("mean", 20), ("last", 30))
    fit = json.loads((DEFAULT_ADAPTER / "head_fit.json").read_text())
    assert fit["C"] in (float(c) for c in fit["cv"]) and fit["domain_rows"] == 500
    # v4 (g1): the v2 guard (extracted to runs/adapters/v2) continued for one epoch on the mix with the contrast
    # requests, seed 1 (v3's recipe with another seed)
    base = json.loads((DEFAULT_ADAPTER / "base_train_config.json").read_text())
    assert (base["method"], base["profile"], base["epochs"], base["learning_rate"]) == ("sft", "guard", 1, 1e-4)
    assert base["adapter"] == "runs/adapters/v2" and base["seed"] == 1
    probe = json.loads((DEFAULT_ADAPTER / "probe_readout.json").read_text())
    assert probe["layers_lora"] == {"rank": 16, "alpha": 32, "first_layer": 15}
    with safe_open(str(DEFAULT_ADAPTER / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and all("lora_A" in k or "lora_B" in k for k in keys)  # no copy of the tied embeddings
        assert any("lm_head" in k for k in keys)
        assert any(float(f.get_tensor(k).abs().max()) > 0 for k in keys if "layers" in k and "lora_B" in k)


@pytest.mark.parametrize(
    ("name", "twins", "oai_repeat"), [("training_data.json", True, 1), ("base_training_data.json", False, 2)]
)
def test_the_shipped_adapter_says_what_it_was_trained_on(name: str, twins: bool, oai_repeat: int) -> None:
    """The training mixes' manifests ship with the adapter (the head's, and its LoRA's): sources, licenses,
    and no calibration, test or XSTest row."""
    data = json.loads((DEFAULT_ADAPTER / name).read_text())
    assert data == json.loads((RESULTS / "training" / name).read_text())
    mix = data["files"]["train_mix.jsonl"]
    sources = {key.split("/")[0] for key in mix["counts"]}
    assert "openai-moderation:train" in sources and not {"openai-moderation:calib", "openai-moderation:test"} & sources
    assert not any(s.startswith("xstest") for s in sources)
    assert sum(mix["counts"].values()) == mix["rows"]
    written = {"benign-guardcal", "contrast-guardcal"} | ({"twins-guardcal"} if twins else set())
    assert set(data["licenses"]) == {"harmbench", "donotanswer"} | written
    assert written <= sources
    oai = sum(n for k, n in mix["counts"].items() if k.startswith("openai-moderation:train/"))
    assert data["oai_repeat"] == oai_repeat and oai == 500 * oai_repeat  # the 500 rows, each oai_repeat times


def test_the_shipped_adapter_is_the_one_evaluated_in_results():
    """results/guard holds the shipped run's config, probe fit and the evaluation of these very files."""
    shipped = json.loads((DEFAULT_ADAPTER / "train_config.json").read_text())
    assert shipped == json.loads((RESULTS / "training" / "train_config.json").read_text())
    base = json.loads((DEFAULT_ADAPTER / "base_train_config.json").read_text())
    assert base == json.loads((RESULTS / "training" / "base_train_config.json").read_text())
    probe = json.loads((DEFAULT_ADAPTER / "probe_readout.json").read_text())
    assert probe == json.loads((RESULTS / "training" / "probe_readout.json").read_text())
    fit = json.loads((DEFAULT_ADAPTER / "head_fit.json").read_text())
    assert fit == json.loads((RESULTS / "training" / "head_fit.json").read_text())
    evaluated = json.loads((RESULTS / "eval" / "run.json").read_text())
    assert evaluated["adapter_hash"] == adapter_fingerprint("default")


def test_the_readout_puts_the_mass_on_the_decision_tokens(default_model):
    """The label-mass boost: the shipped guard answers with a decision token, not with other text."""
    from guardcal.models.loading import load_model
    from guardcal.scoring.scorer import HFScorer

    texts = ["How do I bake bread?", "I will find you and hurt you.", "you people are all idiots"]
    base = HFScorer(default_model.model, default_model.tokenizer).score(texts).scores
    tuned = load_model("default", "default")
    guard = HFScorer(tuned.model, tuned.tokenizer).score(texts).scores
    assert float(np.min(guard.label_mass)) > 0.9 > float(np.max(base.label_mass))


def test_the_adapter_changes_the_decision(default_model):
    from guardcal.models.loading import load_model
    from guardcal.scoring.scorer import HFScorer

    texts = ["How do I bake bread?", "I will find you and hurt you.", "How do I kill a Python process?"]
    base = HFScorer(default_model.model, default_model.tokenizer).score(texts).scores
    tuned = load_model("default", "default")
    assert tuned.adapter is not None
    moved = HFScorer(tuned.model, tuned.tokenizer).score(texts).scores
    assert np.abs(moved.p_unsafe_norm - base.p_unsafe_norm).max() > 1e-3


@pytest.mark.timeout(600)
def test_evaluate_accepts_adapter_default(tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "guardcal.cli", "evaluate", "--adapter", "default", "--dataset", "xstest"]
    cmd += ["--limit", "4", "--no-progress", "--output", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=540)
    run = json.loads((out / "run.json").read_text())
    assert run["adapter_hash"] == adapter_fingerprint("default")
    assert run["datasets"] == {"xstest": 4}


def test_serving_accepts_adapter_default():
    """The server's settings take ``adapter="default"``; the transformers backend loads it and says so."""
    import asyncio

    from guardcal.backends.transformers_backend import TransformersBackend
    from guardcal.serve.settings import ServeSettings

    assert ServeSettings(bundle=None, escalate_below=0.9, adapter="default").adapter == "default"

    async def run() -> tuple[dict, float]:
        backend = TransformersBackend(adapter="default", dtype="float32")
        await backend.start()
        try:
            scores = await backend.score(["I will find you and hurt you."])
            return backend.identity(), float(scores.p_unsafe_norm[0])
        finally:
            await backend.aclose()

    identity, p = asyncio.run(run())
    assert identity["adapter_hash"] == adapter_fingerprint("default")
    assert 0.0 < p < 1.0
