"""Training configs are checked before any model loads."""

import pytest

from guardcal.cli import main
from guardcal.core.examples import Example
from guardcal.errors import ConfigError, DataError
from guardcal.train.config import PROFILE_VALUES, TrainConfig, build_config, field_help
from guardcal.train.rows import check_trainable


def test_profiles_and_overrides(tmp_path):
    cfg = build_config({"method": "cal-grpo", "output": "o"})
    assert cfg.num_generations == PROFILE_VALUES["cpu-small"]["grpo"]["num_generations"]
    assert cfg.reasoning and cfg.lambda_ce == 0.001
    paper = build_config({"method": "grpo", "profile": "paper", "output": "o"})
    assert (paper.num_generations, paper.reasoning_budget, paper.learning_rate) == (32, 256, 1e-3)
    assert paper.per_device_batch * paper.grad_accum == 256  # effective batch of completions
    # checkpointing trades a forward for memory: on for GPUs, off for the CPU profile (speed)
    assert paper.gradient_checkpointing and not cfg.gradient_checkpointing
    assert not build_config({"method": "sft", "output": "o"}).gradient_checkpointing
    assert build_config({"method": "sft", "output": "o", "gradient_checkpointing": True}).gradient_checkpointing
    from guardcal.train.runner import _common_args

    assert _common_args(paper)["gradient_checkpointing"] is True
    # TRL's fused head scores completion positions only, unless switched off (the benchmark's baseline)
    assert (
        cfg.compact_lm_head
        and not build_config({"method": "grpo", "output": "o", "compact_lm_head": False}).compact_lm_head
    )
    # the CPU profile runs the loss 4 completions at a time (memory); the paper's GPU profile all at once
    assert (cfg.loss_row_chunk, paper.loss_row_chunk) == (4, 0)
    with pytest.raises(ConfigError, match="loss_row_chunk must be >= 0"):
        build_config({"method": "grpo", "output": "o", "loss_row_chunk": -1})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("method: sft\nepochs: 7\nlora-r: 8\n")
    cfg = build_config({"output": "o", "epochs": 2.0}, yaml_file)
    assert (cfg.method, cfg.epochs, cfg.lora_r, cfg.reasoning) == ("sft", 2.0, 8, False)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "dpo"}, "unknown method 'dpo'"),
        ({"lambda_ce": -0.1}, "lambda_ce must be >= 0"),
        ({"per_device_batch": 6, "grad_accum": 1, "num_generations": 4}, "divisible by num_generations"),
        ({"num_generations": 1, "per_device_batch": 4}, "at least 2"),
        ({"advantage": "ppo"}, "unknown advantage"),
        ({"ce_variant": "x"}, "unknown ce_variant"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"adapter": "/nonexistent/adapter"}, "--adapter /nonexistent/adapter: .*not a PEFT adapter folder"),
    ],
)
def test_bad_configs_fail_clearly(fields, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(output="o", **fields)


def test_yaml_unknown_field_and_missing_output(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lamda: 0.1\n")
    with pytest.raises(ConfigError, match="unknown field.*lamda"):
        build_config({"output": "o"}, bad)
    with pytest.raises(ConfigError, match="--output"):
        build_config({})


def test_dataset_without_both_labels_is_refused():
    with pytest.raises(DataError, match="only \\['safe'\\]"):
        check_trainable([Example("1", "hi", "safe")], "jsonl:x")
    with pytest.raises(DataError, match="empty"):
        check_trainable([], "jsonl:x")


def test_cli_refuses_bad_config_before_loading(tmp_path, capsys):
    assert main(["train", "--method", "cal-grpo", "--lambda", "-1", "--output", str(tmp_path)]) == 2
    assert "lambda_ce must be >= 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written, no model loaded


def test_every_field_has_help():
    assert all(field_help().values())


def test_only_the_main_process_writes_the_log(tmp_path):
    """Under accelerate/torchrun every process runs the callbacks; log.jsonl gets one copy of each line."""
    from types import SimpleNamespace

    from guardcal.train.callbacks import JsonlLog, JsonlLogCallback

    log = JsonlLog(tmp_path / "log.jsonl")
    callback = JsonlLogCallback(log)
    for rank in range(2):
        state = SimpleNamespace(global_step=3, is_world_process_zero=rank == 0)
        callback.on_log(None, state, None, logs={"loss": 0.5})
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"loss": 0.5' in lines[0]


def test_saved_adapter_config_is_canonical(tmp_path):
    """PEFT writes target_modules in set order (it changes with string hashing); the runner sorts it."""
    import json

    from guardcal.train.runner import canonical_adapter_config

    (tmp_path / "adapter_config.json").write_text(json.dumps({"target_modules": ["v_proj", "q_proj"], "r": 16}))
    canonical_adapter_config(tmp_path)
    text = (tmp_path / "adapter_config.json").read_text()
    assert json.loads(text) == {"r": 16, "target_modules": ["q_proj", "v_proj"]}
    canonical_adapter_config(tmp_path)
    assert (tmp_path / "adapter_config.json").read_text() == text  # idempotent: same bytes, same fingerprint
    canonical_adapter_config(tmp_path / "missing")  # no adapter written: nothing to do


def test_saved_adapter_keeps_only_lora_tensors(tmp_path):
    """An lm_head LoRA makes PEFT save the tied embedding matrix too; the runner drops that copy."""
    import torch
    from safetensors.torch import load_file, save_file

    from guardcal.train.runner import drop_base_weight_copies

    lora = {
        "base_model.model.lm_head.lora_A.weight": torch.ones(1, 4),
        "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight": torch.zeros(8, 2),
    }
    path = tmp_path / "adapter_model.safetensors"
    save_file({**lora, "base_model.model.model.embed_tokens.weight": torch.ones(50, 4)}, str(path))
    assert drop_base_weight_copies(tmp_path) == ["base_model.model.model.embed_tokens.weight"]
    kept = load_file(str(path))
    assert sorted(kept) == sorted(lora)
    assert torch.equal(kept["base_model.model.lm_head.lora_A.weight"], torch.ones(1, 4))
    assert drop_base_weight_copies(tmp_path) == []  # nothing left to drop
    assert drop_base_weight_copies(tmp_path / "missing") == []


def test_the_epoch_benchmark_baseline_flags_parse(monkeypatch, tmp_path):
    """benchmarks/epoch_time.py trains its baseline with these flags: they must reach the config."""
    import guardcal.train.runner as runner
    from benchmarks.epoch_time import BASELINE_FLAGS

    seen = []
    monkeypatch.setattr(runner, "run_training", lambda cfg: seen.append(cfg) or tmp_path)
    assert main(["train", "--method", "cal-grpo", "--output", str(tmp_path), *BASELINE_FLAGS]) == 0
    assert seen[0].gradient_checkpointing and not seen[0].compact_lm_head
