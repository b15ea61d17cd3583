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


@pytest.mark.timeout(600)
def test_final_validation_runs_after_the_adapter_is_saved(tmp_path, data_dir, default_model, monkeypatch):
    """A run interrupted during its final validation must still leave its adapter, not only checkpoint-N."""
    from guardcal.train.callbacks import CalibrationEvalCallback

    out = tmp_path / "sft"
    seen: list[tuple[int, bool]] = []
    evaluate = CalibrationEvalCallback.evaluate

    def recording(self, model, step):
        seen.append((step, (out / "adapter_model.safetensors").is_file()))
        return evaluate(self, model, step)

    monkeypatch.setattr(CalibrationEvalCallback, "evaluate", recording)
    cfg = {**TINY, "method": "sft", "max_steps": 1, "eval_steps": 5, "output": str(out), "data_dir": str(data_dir)}
    run_training(build_config(cfg))
    assert seen == [(1, True)]
    assert [r["step"] for r in _log(out) if "eval/ece" in r] == [1]


@pytest.mark.timeout(900)
def test_resume_and_evaluate_with_adapter(tmp_path, data_dir, default_model):
    """A second run with more steps resumes from the checkpoint; evaluate loads the adapter."""
    from guardcal.models.loading import load_model
    from guardcal.scoring.scorer import HFScorer

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


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("cal-grpo-brier", {"method": "cal-grpo", "calibration_loss": "brier"}),
        ("rlcr", {"method": "rlcr"}),
        ("capo", {"method": "capo", "capo_score": "logprob"}),
    ],
)
def test_two_steps_of_calibration_methods(name, fields, tmp_path, data_dir, default_model):
    out = tmp_path / name
    run_training(build_config({**TINY, **fields, "output": str(out), "data_dir": str(data_dir)}))
    assert (out / "adapter_model.safetensors").is_file()
    saved = json.loads((out / "train_config.json").read_text())
    assert {k: saved[k] for k in fields} == fields
    steps = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r for r in _log(out) if "eval/ece" in r]
    for r in steps:  # decision-token confidence read at generation time, for every method
        assert 0.0 <= r["decision/q_gt_0.99"] <= 1.0 and 0.5 <= r["decision/q_mean"] <= 1.0
    if name == "cal-grpo-brier":
        assert all(r["loss/brier"] > 0 and "loss/policy" in r and "loss/ce" not in r for r in steps)
    if name == "rlcr":
        assert saved["advantage"] == "group"
        for r in steps:  # r = 1[c] - (q - 1[c])² <= 1[c]; no decision = -1
            assert -1.0 <= r["rewards/rlcr_reward/mean"] <= r["decision/accuracy"] + 1e-6
    if name == "capo":
        assert saved["advantage"] == "pairwise"
        for r in steps:
            assert 1.0 <= r["capo/ppl_low"] <= r["capo/ppl_high"] and r["capo/ref_ppl_mean"] >= 1.0
            assert 0.0 <= r["capo/masked_correct"] <= 1.0 and 0.0 <= r["capo/masked_incorrect"] <= 1.0
            assert r["capo/score_mean"] < 0.0  # mean token log-prob of the response
        # before the first update the LoRA B matrices are 0: policy and frozen reference agree
        assert steps[0]["capo/score_mean"] == pytest.approx(steps[0]["capo/ref_mean_logp"], abs=1e-4)


@pytest.mark.timeout(900)
def test_training_continues_from_an_adapter(tmp_path, data_dir, default_model):
    """--adapter DIR: cal-grpo trains the given adapter (its rank, its weights), not a fresh LoRA."""
    from safetensors.torch import load_file

    first, second = tmp_path / "sft", tmp_path / "cal-grpo"
    common = {**TINY, "max_steps": 1, "data_dir": str(data_dir)}
    run_training(build_config({**common, "method": "sft", "output": str(first), "learning_rate": 1e-2}))
    cfg = {**common, "method": "cal-grpo", "output": str(second), "adapter": str(first), "lora_r": 8}
    run_training(build_config(cfg))
    assert json.loads((second / "adapter_config.json").read_text())["r"] == TINY["lora_r"]  # the adapter's, not 8
    assert json.loads((second / "train_config.json").read_text())["adapter"] == str(first)
    w1, w2 = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    b_keys = [k for k in w1 if "lora_B" in k]
    start = sum(float(w1[k].norm()) for k in b_keys)
    moved = sum(float((w2[k] - w1[k]).norm()) for k in b_keys)
    assert start > 0 and moved < 0.5 * start  # it started from the first adapter (a fresh LoRA starts at B = 0)
    assert any(not (w2[k] == w1[k]).all() for k in w1)  # and it trained


@pytest.mark.timeout(900)
def test_sft_trains_an_lm_head_lora_and_saves_no_embedding_copy(tmp_path, data_dir, default_model):
    """A decision readout on lm_head (scripts/probe_readout.py's adapters) goes on training under SFT.

    TRL's SFTTrainer refuses lm_head adapters (its own loss would skip them); guardcal's decision
    loss calls the adapted head, so the adapter must get gradients and move, and the saved adapter
    must not carry PEFT's copy of the tied 49k x 576 embedding matrix.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from guardcal.models.loading import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    lora = LoraConfig(r=2, lora_alpha=2, target_modules=r".*\.layers\.29\..*\.(q_proj|v_proj)|lm_head")
    start = tmp_path / "start"
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # a readout that already moves every token a little
        peft_model.base_model.model.lm_head.lora_B["default"].weight.fill_(0.01)
    peft_model.save_pretrained(str(start), save_embedding_layers=False)
    before = load_file(str(start / "adapter_model.safetensors"))

    out = tmp_path / "sft"
    cfg = {**TINY, "method": "sft", "output": str(out), "data_dir": str(data_dir), "adapter": str(start)}
    run_training(build_config({**cfg, "learning_rate": 1e-2}))
    after = load_file(str(out / "adapter_model.safetensors"))
    assert sorted(after) == sorted(before)  # the same LoRA tensors, and nothing else (no embedding copy)
    head = [k for k in after if "lm_head" in k]
    assert head and all(not torch.equal(after[k], before[k]) for k in head)  # the readout trained
