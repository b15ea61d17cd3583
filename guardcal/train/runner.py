"""``guardcal train``: build the model, data and TRL trainer from a ``TrainConfig`` and run it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardcal import __version__
from guardcal.core.decision import DecisionParser
from guardcal.core.examples import Example
from guardcal.core.labels import LabelSpec
from guardcal.core.profiles import load_profile
from guardcal.core.prompt import PromptTemplate
from guardcal.data.loaders import load_dataset, write_split_manifest
from guardcal.errors import ConfigError
from guardcal.train.config import TrainConfig
from guardcal.train.rows import check_trainable, grpo_rows, sft_class_weights, sft_rows


def _common_args(cfg: TrainConfig) -> dict[str, Any]:
    import torch

    return {
        "output_dir": cfg.output,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.per_device_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "max_steps": cfg.max_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.keep_checkpoints,
        "warmup_steps": cfg.warmup_ratio,  # a float in [0, 1) is a share of the steps (transformers 5)
        "lr_scheduler_type": cfg.lr_scheduler,
        "train_sampling_strategy": "group_by_length" if cfg.length_grouped else "random",
        "logging_steps": 1,
        "seed": cfg.seed,
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "disable_tqdm": False,
    }


def latest_checkpoint(output: Path) -> str | None:
    ckpts = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def lora_layers(model: Any, first: int) -> list[int] | None:
    """Decoder layer indices LoRA adapts: ``first`` up to the last (None = all layers)."""
    if first == 0:
        return None
    n = int(model.config.num_hidden_layers)
    if first >= n:
        raise ConfigError(f"lora_first_layer {first} leaves no layer to adapt: the model has {n} (0..{n - 1})")
    return list(range(first, n))


def build_trainer(cfg: TrainConfig, model: Any, tokenizer: Any, callbacks: list[Any]) -> Any:
    """The TRL trainer for ``cfg.method``; a base ``model`` gets a fresh LoRA, a PeftModel trains its adapter."""
    peft_config = lora_config(cfg, model)
    template = PromptTemplate.for_profile(load_profile(cfg.prompt), cfg.reasoning).bind(tokenizer)
    spec = LabelSpec.from_tokenizer(tokenizer, template.spec.surfaces())
    examples = load_dataset(cfg.train_dataset, cfg.data_dir)
    check_trainable(examples, cfg.train_dataset)
    parts = TrainerParts(model, tokenizer, examples, spec, template, peft_config, callbacks)
    return sft_trainer(cfg, parts) if cfg.method == "sft" else grpo_trainer(cfg, parts)


def lora_config(cfg: TrainConfig, model: Any) -> Any:
    """A fresh LoRA for a base model; None for a PeftModel (it trains the adapter it has)."""
    from peft import LoraConfig, PeftModel

    if isinstance(model, PeftModel):
        return None
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        layers_to_transform=lora_layers(model, cfg.lora_first_layer),
        task_type="CAUSAL_LM",
    )


@dataclass
class TrainerParts:
    """What both trainers are built from."""

    model: Any
    tokenizer: Any
    examples: list[Example]
    spec: LabelSpec
    template: PromptTemplate
    peft_config: Any
    callbacks: list[Any]


def sft_trainer(cfg: TrainConfig, parts: TrainerParts) -> Any:
    """SFT on the decision token (``DecisionSFTTrainer``), optionally class-weighted."""
    from datasets import Dataset
    from trl import SFTConfig

    from guardcal.train.sft import DecisionSFTTrainer

    examples, tokenizer, spec, template = parts.examples, parts.tokenizer, parts.spec, parts.template
    rows = sft_rows(examples, tokenizer, spec, template, cfg.max_input_tokens)
    args = SFTConfig(**_common_args(cfg), completion_only_loss=True, max_length=None, packing=False)
    weights = sft_class_weights(examples, tokenizer, spec, template) if cfg.class_balance == "weight" else None
    return DecisionSFTTrainer(
        class_weights=weights,
        model=parts.model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=parts.peft_config,
        callbacks=parts.callbacks,
    )


def grpo_trainer(cfg: TrainConfig, parts: TrainerParts) -> Any:
    """The GRPO family (``GuardGRPOTrainer``) with forced-decision rollouts and ``cfg``'s objective."""
    from datasets import Dataset
    from trl import GRPOConfig

    from guardcal.train.grpo import GuardGRPOTrainer
    from guardcal.train.rollout import ForcedDecisionRollout
    from guardcal.train.strategies import objective_for

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    tokenizer, spec, template = parts.tokenizer, parts.spec, parts.template
    parser = DecisionParser.for_tokenizer(tokenizer, spec, reasoning=cfg.reasoning)
    objective = objective_for(cfg)
    suffix_len = len(tokenizer.encode(template.decision_suffix(), add_special_tokens=False))
    args = GRPOConfig(
        **_common_args(cfg),
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        max_completion_length=cfg.reasoning_budget + suffix_len + 1,
        beta=0.0,
        loss_type="bnpo",
        scale_rewards="group" if cfg.advantage == "group" else "none",
        importance_sampling_level="token",
    )
    return GuardGRPOTrainer(
        model=parts.model,
        reward_funcs=[objective.reward_function(parser, spec)],
        args=args,
        train_dataset=Dataset.from_list(grpo_rows(parts.examples, tokenizer, template, cfg.max_input_tokens)),
        processing_class=tokenizer,
        peft_config=parts.peft_config,
        callbacks=parts.callbacks,
        rollout_func=ForcedDecisionRollout(template, cfg.reasoning_budget, cfg.temperature, label_ids=spec.token_ids),
        parser=parser,
        spec=spec,
        objective=objective,
        ce_variant=cfg.ce_variant,
        compact_lm_head=cfg.compact_lm_head,
        loss_row_chunk=cfg.loss_row_chunk,
    )


def run_training(cfg: TrainConfig) -> Path:
    """Train, save the adapter and the records; resume from the newest checkpoint in ``output``. Method
    ``head`` takes no gradient steps: it fits a pooled head on the frozen model's states (``train.head``)."""
    if cfg.method == "head":
        from guardcal.train.head import fit_head

        return fit_head(cfg)
    return _train_adapter(cfg)


def _train_adapter(cfg: TrainConfig) -> Path:
    """The LoRA methods (sft and the GRPO family): train, save the adapter and the records."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from guardcal.models.loading import load_tokenizer, resolve_model
    from guardcal.scoring.scorer import HFScorer
    from guardcal.train.callbacks import CalibrationEvalCallback, JsonlLog, JsonlLogCallback

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    (out / "train_config.json").write_text(json.dumps({**cfg.to_dict(), "guardcal_version": __version__}, indent=2))
    if cfg.train_dataset.startswith("openai-moderation"):
        write_split_manifest(out / "split_manifest.json", cfg.data_dir)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=torch.float32)
    if cfg.adapter is not None:  # continue training an adapter (e.g. cal-grpo on top of sft, or the shipped one)
        from peft import PeftModel

        from guardcal.models.loading import check_adapter_dir

        model = PeftModel.from_pretrained(model, str(check_adapter_dir(cfg.adapter)), is_trainable=True)
    log = JsonlLog(out / "log.jsonl")
    template = PromptTemplate.for_profile(load_profile(cfg.prompt), cfg.reasoning)
    eval_examples = load_dataset(cfg.eval_dataset, cfg.data_dir)[: cfg.eval_limit] if cfg.eval_limit else []

    def factory(m: Any) -> HFScorer:
        return HFScorer(
            m,
            tokenizer,
            template,
            batch_size=8,
            max_input_tokens=cfg.max_input_tokens,
            max_new_tokens=cfg.reasoning_budget,
        )

    validation = CalibrationEvalCallback(log, factory, eval_examples, cfg.eval_steps)
    trainer = build_trainer(cfg, model, tokenizer, [JsonlLogCallback(log), validation])
    resume = latest_checkpoint(out)
    if resume is not None:
        log.drop_after(int(Path(resume).name.split("-")[-1]))
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))
    (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing guardcal loads needs it
    canonical_adapter_config(out)
    drop_base_weight_copies(out)
    if trainer.is_world_process_zero():
        validation.finish(trainer.model, trainer.state.global_step)
    summary = {
        "method": cfg.method,
        "seconds": round(time.time() - started, 1),
        "resumed_from": resume,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out


def canonical_adapter_config(out: Path) -> None:
    """Sort ``target_modules`` in the saved ``adapter_config.json``.

    PEFT writes them from a set, in an order that changes with Python's string hashing from one
    process to the next, so the same training would get a different adapter fingerprint.
    """
    path = out / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def drop_base_weight_copies(out: Path) -> list[str]:
    """Keep only the LoRA tensors in the saved ``adapter_model.safetensors``; returns what was dropped.

    With ``lm_head`` among the LoRA targets PEFT also saves the whole (tied, unchanged) embedding
    matrix next to the adapter (113 MB for the default model, 5x the adapter); guardcal never trains
    the embeddings, so those copies are the base model's own weights and are dropped.
    """
    from safetensors.torch import load_file, save_file

    path = out / "adapter_model.safetensors"
    if not path.is_file():
        return []
    tensors = load_file(str(path))
    dropped = sorted(k for k in tensors if "lora_" not in k)
    if dropped:
        save_file({k: v for k, v in tensors.items() if "lora_" in k}, str(path), metadata={"format": "pt"})
    return dropped
