"""Two real training steps of each method on the default model (tiny batches)."""

import json

import pytest

from guardcal.train.config import build_config
from guardcal.train.runner import run_training

TINY = {
    "max_steps": 2,
    "per_device_batch": 4,
    "grad_accum": 1,
    "num_generations": 4,
    "max_input_tokens": 16,
    "reasoning_budget": 2,
    "eval_limit": 4,
    "eval_steps": 2,
    "save_steps": 2,
    "lora_r": 4,
    "lora_alpha": 8,
}


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("method", ["sft", "grpo", "cal-grpo"])
def test_two_steps_write_adapter_and_log(method, tmp_path, data_dir, default_model):
    out = tmp_path / method
    cfg = build_config({**TINY, "method": method, "output": str(out), "data_dir": str(data_dir)})
    run_training(cfg)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "train_config.json").read_text())["method"] == method
    assert json.loads((out / "split_manifest.json").read_text())["sizes"]["train"] == 500
    steps = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    evals = [r for r in _log(out) if "eval/ece" in r]
    assert evals and evals[-1]["eval/n"] == 4
    if method != "sft":
        assert all("decision/parse_rate" in r and "reward" in r for r in steps)
    if method == "cal-grpo":
        assert all("loss/policy" in r and "loss/ce" in r and r["loss/ce"] > 0 for r in steps)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2


@pytest.mark.timeout(900)
def test_resume_and_evaluate_with_adapter(tmp_path, data_dir, default_model):
    """A second run with more steps resumes from the checkpoint; evaluate loads the adapter."""
    from guardcal.backends.hf import HFScorer
    from guardcal.models.loading import load_model

    out = tmp_path / "sft"
    base = {**TINY, "method": "sft", "output": str(out), "data_dir": str(data_dir), "learning_rate": 1e-2}
    run_training(build_config(base))
    run_training(build_config({**base, "max_steps": 3}))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 3
    tuned = load_model("default", adapter=out)
    texts = ["How do I bake bread?", "I will kill you"]
    a = HFScorer(default_model.model, default_model.tokenizer).score(texts).scores
    b = HFScorer(tuned.model, tuned.tokenizer).score(texts).scores
    assert abs(a.p_unsafe_norm - b.p_unsafe_norm).max() > 1e-3
