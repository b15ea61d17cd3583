"""Training configuration: one dataclass, two profiles, YAML + flags, checked before any model loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from guardcal.errors import ConfigError, ModelError

METHODS = ("sft", "grpo", "cal-grpo", "rlcr", "capo", "head")
ADVANTAGES = ("auto", "beta", "group", "pairwise")
CE_VARIANTS = ("full", "renorm")
CALIBRATION_LOSSES = ("ce", "brier")
CAPO_SCORES = ("logit", "logprob")
# "auto" resolves per method: BNPO for grpo/cal-grpo (and sft, where it is unused), the group-standardised
# advantage for rlcr (its rewards are not 0/1), CAPO's pairwise advantage for capo.
AUTO_ADVANTAGE = {
    "sft": "beta",
    "grpo": "beta",
    "cal-grpo": "beta",
    "rlcr": "group",
    "capo": "pairwise",
    "head": "beta",
}
# options that only one method reads: giving them to another method is an error, not a silent no-op
METHOD_ONLY = {
    "calibration_loss": "cal-grpo",
    "capo_tau": "capo",
    "capo_score": "capo",
    "capo_noise_mask": "capo",
    "capo_mask_low_quantile": "capo",
    "capo_mask_high_quantile": "capo",
    "capo_ppl_low": "capo",
    "capo_ppl_high": "capo",
    "head_readouts": "head",
    "head_domain_prefix": "head",
    "head_domain_weight": "head",
}
PROFILES = ("cpu-small", "paper", "guard")
LR_SCHEDULERS = ("linear", "cosine", "constant")
CLASS_BALANCES = ("none", "weight")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclasses.field(metadata={"help"})
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything `guardcal train` needs; every field has help text and can come from YAML."""

    method: str = _f("cal-grpo", f"training method: one of {METHODS}")
    output: str = _f("", "output folder: adapter, resolved config, split manifest, log.jsonl, checkpoints")
    model: str = _f("default", "'default' (embedded SmolLM2-135M-Instruct), a local folder or a HF id")
    adapter: str | None = _f(
        None,
        "start from this PEFT adapter (a folder from guardcal train, or 'default' = the shipped one) instead "
        "of a fresh LoRA; the adapter's own rank, alpha and targets then apply (the lora_* fields are ignored)",
    )
    profile: str = _f("cpu-small", f"hyper-parameter profile: {PROFILES}; explicit fields override it")
    prompt: str = _f(
        "default",
        "prompt profile (policy, label words, layout): a built-in name (`guardcal prompts`) or a YAML file; "
        "evaluate, calibrate and serve the adapter with the same profile",
    )
    data_dir: str | None = _f(None, "data root (default: $GUARDCAL_DATA_DIR, else ../shared/data when it exists)")
    train_dataset: str = _f("openai-moderation:train", "training set (any guardcal dataset key)")
    eval_dataset: str = _f("openai-moderation:calib", "validation slice for the evaluation callback")
    eval_limit: int = _f(64, "validation examples scored by the evaluation callback (0 = off)")
    eval_steps: int = _f(20, "run the evaluation callback every N optimiser steps")
    max_input_tokens: int = _f(192, "inputs are cut to this many tokens before the prompt is rendered")
    # optimisation
    learning_rate: float = _f(2e-4, "peak learning rate")
    epochs: float = _f(1.0, "passes over the training set")
    per_device_batch: int = _f(8, "sequences (SFT) or completions (GRPO) per device per micro-step")
    grad_accum: int = _f(4, "gradient accumulation steps")
    max_steps: int = _f(-1, "stop after N optimiser steps (-1: run all epochs)")
    save_steps: int = _f(10, "checkpoint every N optimiser steps (resumable)")
    seed: int = _f(0, "random seed")
    warmup_ratio: float = _f(0.0, "share of the optimiser steps spent warming the learning rate up from 0")
    lr_scheduler: str = _f("linear", f"learning-rate schedule after warm-up: one of {LR_SCHEDULERS}")
    head_readouts: str = _f(
        "",
        "method head: POOL@LAYER readouts (mean, mean_normed, last; hidden_states indices), comma-separated; "
        "empty = the means at a third, half and two thirds of the layers and the decision position at the top",
    )
    head_domain_prefix: str = _f(
        "",
        "method head: rows whose id starts with this weigh as much as all the others together, each class "
        "balanced within (e.g. 'oai-' in a request mix); empty = the classes balanced",
    )
    head_domain_weight: float = _f(
        1.0,
        "method head with head_domain_prefix: how many times the prefixed rows weigh against all the others "
        "(2 = twice as much)",
    )
    class_balance: str = _f(
        "none",
        f"{CLASS_BALANCES}: 'weight' weighs each SFT row's loss by the inverse of its label's share of the "
        "training set (mean weight 1), so a 70/30 prior cannot pull the decision token to the majority label",
    )
    length_grouped: bool = _f(
        False, "batch rows of similar length together (less padding; the order within an epoch stays random)"
    )
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (older ones are deleted)")
    gradient_checkpointing: bool = _f(
        True,
        "recompute activations in the backward pass: less memory, one more forward (cpu-small turns it off: "
        "~30 s of a 122 s step saved for ~4 GB more peak memory here; the numbers are the same either way)",
    )
    compact_lm_head: bool = _f(
        True,
        "on a CPU, TRL's fused LM head scores only the completion positions, as it does on CUDA (same "
        "log-probs; ~25 s of a 122 s cpu-small step saved); --no-compact-lm-head scores every position "
        "as TRL does off CUDA (the epoch_time benchmark's baseline). Once on, it stays on in that process",
    )
    loss_row_chunk: int = _f(
        0,
        "GRPO family: forward and backward a micro-batch this many completions at a time (0 = all at once). "
        "The loss and its gradient stay the micro-batch's (each chunk is scaled to its normalisers); only one "
        "chunk's activations are alive at a time (a cpu-small cal-GRPO step: 12.2 GB whole, 4.8 GB in chunks of 4; "
        "benchmarks/results/grpo_memory.json)",
    )
    bf16: bool = _f(
        False, "bf16 autocast (paper profile, GPUs); off on CPU: faster but it changed the first SFT steps"
    )
    # LoRA
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.1, "LoRA dropout")
    lora_targets: list[str] = _f(list(ALL_LINEAR), "module names LoRA adapts")
    lora_first_layer: int = _f(
        0,
        "LoRA adapts only decoder layers from this index up (0 = all); the backward pass then stops at that "
        "layer, so a step costs ~1 + 2 × (share of layers adapted) forwards instead of 3",
    )
    # GRPO family
    num_generations: int = _f(4, "completions sampled per prompt")
    reasoning_budget: int = _f(16, "max reasoning tokens before '</think>' is forced (0 = direct, no reasoning)")
    temperature: float = _f(1.0, "sampling temperature for rollouts")
    advantage: str = _f(
        "auto",
        f"advantage: {ADVANTAGES} (beta = BNPO, arXiv 2506.02864; group = TRL's; pairwise = CAPO's); auto = beta "
        "for grpo/cal-grpo, group for rlcr, pairwise for capo",
    )
    lambda_ce: float = _f(0.001, "cal-grpo: weight λ of the decision-token loss (CE or Brier)")
    ce_variant: str = _f(
        "full", f"cal-grpo: decision-token loss over {CE_VARIANTS} (full = vocabulary log-probs, as in the paper)"
    )
    calibration_loss: str = _f(
        "ce", f"cal-grpo: loss at the decision token, {CALIBRATION_LOSSES} (brier = bounded proper scoring rule)"
    )
    # CAPO (arXiv 2604.12632)
    capo_tau: float = _f(0.5, "capo: temperature τ of the logistic pairwise surrogate (paper: 0.5-0.6)")
    capo_score: str = _f(
        "logit",
        f"capo: rollout confidence score, {CAPO_SCORES} (logit = decision token log p - log(1-p); logprob = mean "
        "token log-prob of the response, the paper's)",
    )
    capo_noise_mask: bool = _f(True, "capo: drop lucky-guess correct / near-correct wrong rollouts (reference PPL)")
    capo_mask_low_quantile: float = _f(0.25, "capo: wrong rollouts below this quantile of reference PPL are dropped")
    capo_mask_high_quantile: float = _f(0.75, "capo: right rollouts above this quantile of reference PPL are dropped")
    capo_ppl_low: float = _f(0.0, "capo: fixed low PPL threshold instead of the quantile (0 = measured; paper 1.05)")
    capo_ppl_high: float = _f(0.0, "capo: fixed high PPL threshold instead of the quantile (0 = measured; paper 2.5)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for anything that would fail later, before a model is loaded."""
        from guardcal.core.profiles import load_profile

        load_profile(self.prompt)
        self._check_choices()
        if self.class_balance != "none" and self.method != "sft":
            raise ConfigError(
                "class_balance weighs the SFT loss; for the GRPO family it does not apply yet — drop it or use "
                "--method sft"
            )
        if self.lora_first_layer < 0:
            raise ConfigError(f"lora_first_layer must be >= 0 (a decoder layer index), got {self.lora_first_layer}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self._check_advantage()
        self._check_capo()
        if self.adapter is not None:
            from guardcal.models.loading import has_lora

            try:
                lora = has_lora(self.adapter)
            except ModelError as exc:
                raise ConfigError(f"--adapter {self.adapter}: {exc}") from exc
            if not lora:
                raise ConfigError(
                    f"--adapter {self.adapter} holds only a pooled head, which training cannot continue: "
                    "start from a LoRA adapter folder, or from the base model (no --adapter)"
                )
        if self.lambda_ce < 0:
            raise ConfigError(f"lambda_ce must be >= 0 (it weighs a loss), got {self.lambda_ce}")
        positive = (
            "per_device_batch",
            "grad_accum",
            "num_generations",
            "lora_r",
            "max_input_tokens",
            "keep_checkpoints",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.loss_row_chunk < 0:
            raise ConfigError(f"loss_row_chunk must be >= 0 (0 = the whole micro-batch), got {self.loss_row_chunk}")
        if self.reasoning_budget < 0:
            raise ConfigError(f"reasoning_budget must be >= 0, got {self.reasoning_budget}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.method not in ("sft", "head"):
            self._check_generation_batch()

    def _check_choices(self) -> None:
        """Every named option is one of its choices; ``advantage: auto`` becomes the method's own."""
        _choice("method", self.method, METHODS)
        _choice("profile", self.profile, PROFILES)
        _choice("advantage", self.advantage, ADVANTAGES)
        if self.advantage == "auto":
            self.advantage = AUTO_ADVANTAGE[self.method]
        _choice("ce_variant", self.ce_variant, CE_VARIANTS)
        _choice("calibration_loss", self.calibration_loss, CALIBRATION_LOSSES)
        _choice("capo_score", self.capo_score, CAPO_SCORES)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("class_balance", self.class_balance, CLASS_BALANCES)

    def _check_generation_batch(self) -> None:
        """GRPO family: at least two completions per prompt, all of a prompt's in one generation batch."""
        if self.num_generations < 2:
            raise ConfigError("num_generations must be at least 2: GRPO compares completions of one prompt")
        gen_batch = self.per_device_batch * self.grad_accum
        if gen_batch % self.num_generations:
            raise ConfigError(
                f"the generation batch (per_device_batch × grad_accum = {gen_batch}) must be divisible by "
                f"num_generations ({self.num_generations}): every prompt needs all its completions in one "
                "batch; change per_device_batch or num_generations"
            )

    def _check_advantage(self) -> None:
        if self.method == "capo" and self.advantage != "pairwise":
            raise ConfigError(
                f"capo replaces the advantage with its pairwise one; drop --advantage {self.advantage} "
                "(or pass --advantage pairwise)"
            )
        if self.advantage == "pairwise" and self.method != "capo":
            raise ConfigError(f"--advantage pairwise is CAPO's; use --method capo, or beta/group for {self.method}")
        if self.method == "rlcr" and self.advantage == "beta":
            raise ConfigError(
                "BNPO's Beta-normalised advantage assumes 0/1 rewards, but RLCR's reward is continuous in "
                "[-1, 1]; use --advantage group"
            )

    def _check_capo(self) -> None:
        if self.capo_tau <= 0:
            raise ConfigError(f"capo_tau must be > 0 (it divides the score gap), got {self.capo_tau}")
        lo, hi = self.capo_mask_low_quantile, self.capo_mask_high_quantile
        if not 0 <= lo <= 1 or not 0 <= hi <= 1:
            raise ConfigError(f"capo mask quantiles must lie in [0, 1], got low {lo} and high {hi}")
        for name in ("capo_ppl_low", "capo_ppl_high"):
            value = getattr(self, name)
            if value != 0 and value < 1:
                raise ConfigError(f"{name} must be 0 (measured) or >= 1 (a perplexity is never below 1), got {value}")
        if self.capo_ppl_low and self.capo_ppl_high and self.capo_ppl_low > self.capo_ppl_high:
            raise ConfigError(
                f"capo_ppl_low ({self.capo_ppl_low}) is above capo_ppl_high ({self.capo_ppl_high}); swap them"
            )

    @property
    def reasoning(self) -> bool:
        return self.method not in ("sft", "head") and self.reasoning_budget > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: cpu-small's GRPO-family values; the guard profile starts from them
_CPU_SMALL_GRPO: dict[str, Any] = {
    "learning_rate": 5e-4,
    "per_device_batch": 16,
    "grad_accum": 2,
    "epochs": 1,
    "num_generations": 4,
    "reasoning_budget": 16,
    "temperature": 1.0,
    "max_input_tokens": 128,
    "gradient_checkpointing": False,
    "loss_row_chunk": 4,
}

PROFILE_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's hyper-parameters (arXiv 2601.13284), for GPUs.
    "paper": {
        "sft": {"learning_rate": 2e-4, "per_device_batch": 8, "grad_accum": 4, "epochs": 5, "max_input_tokens": 1024},
        "grpo": {
            "learning_rate": 1e-3,
            "per_device_batch": 32,
            "grad_accum": 8,
            "epochs": 20,
            "num_generations": 32,
            "reasoning_budget": 256,
            "temperature": 1.0,
            "max_input_tokens": 1024,
            "bf16": True,
            "gradient_checkpointing": True,
        },
    },
    # Measured on 2 idle CPU cores with the default model (benchmarks/epoch_time.py,
    # docs/training.md): SFT ≈ 44 s a step (16 steps an epoch ≈ 12 min); GRPO ≈ 66 s and cal-GRPO ≈ 72 s
    # a step (62 steps an epoch ≈ 68 and 74 min), peak RSS ≈ 16 GB with gradient checkpointing off
    # (on: ≈ 122 s a step, 12 GB) — both before --loss-row-chunk 4, which brings it under 6 GB
    # (benchmarks/grpo_memory.py). --max-steps shortens a run; the LR schedule follows it.
    "cpu-small": {
        "sft": {
            "learning_rate": 2e-4,
            "per_device_batch": 8,
            "grad_accum": 4,
            "epochs": 2,
            "max_input_tokens": 128,
            "gradient_checkpointing": False,
        },
        "grpo": _CPU_SMALL_GRPO,
    },
    # The recipe for a guard that classifies (issue #21), on CPU: the cpu-small SFT learned little
    # more than the 70/30 prior in its 32 steps at 2e-4 (loss 0.59 against the prior's 0.63), and
    # its 128-token cut dropped part of 38% of the training inputs. This profile trains 2 epochs of
    # 32 steps (batch 16) at 1e-3 with warm-up, LoRA on the upper half of the layers (the backward
    # pass stops there: a step costs ~2 forwards instead of 3), class-balanced loss weights, a
    # 256-token budget (78% of the training inputs whole; the rest keep their first 256 tokens) and
    # length-grouped batches, and scores the whole calibration split every epoch (per-class recall
    # and AUROC in log.jsonl).
    "guard": {
        "sft": {
            "learning_rate": 1e-3,
            "per_device_batch": 8,
            "grad_accum": 2,
            "epochs": 2,
            "lora_first_layer": 15,
            "max_input_tokens": 256,
            "gradient_checkpointing": False,
            "warmup_ratio": 0.05,
            "class_balance": "weight",
            "length_grouped": True,
            "eval_limit": 300,
            "eval_steps": 32,
            "save_steps": 32,
            "keep_checkpoints": 4,
        },
        "grpo": {
            **_CPU_SMALL_GRPO,
            "max_input_tokens": 256,
            "warmup_ratio": 0.05,
            "length_grouped": True,
            "eval_limit": 300,
            "keep_checkpoints": 4,
        },
    },
}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; use one of: {', '.join(allowed)}")


def build_config(overrides: dict[str, Any], yaml_file: str | Path | None = None) -> TrainConfig:
    """Profile defaults, then the YAML file, then explicit flags (None = not given)."""
    known = {f.name for f in fields(TrainConfig)}
    from_yaml = _read_yaml(yaml_file) if yaml_file else {}
    unknown = sorted(set(from_yaml) - known)
    if unknown:
        raise ConfigError(f"{yaml_file}: unknown field(s) {unknown}; valid fields: {sorted(known)}")
    given = {**from_yaml, **{k: v for k, v in overrides.items() if v is not None}}
    method = given.get("method", TrainConfig.method)
    profile = given.get("profile", "cpu-small")
    _choice("method", method, METHODS)
    _choice("profile", profile, PROFILES)
    misplaced = sorted(k for k, owner in METHOD_ONLY.items() if k in given and owner != method)
    if misplaced:
        raise ConfigError(
            f"{', '.join(misplaced)} only apply to method {METHOD_ONLY[misplaced[0]]!r}, but the method is "
            f"{method!r}; remove them or change --method"
        )
    base = PROFILE_VALUES[profile]["sft" if method in ("sft", "head") else "grpo"]
    cfg = TrainConfig(**{**base, **given})
    if not cfg.output:
        raise ConfigError("no output folder; pass --output DIR")
    return cfg


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value at the top level")
    return {k.replace("-", "_"): v for k, v in data.items()}


def field_help() -> dict[str, str]:
    """Field name → help text (used by the CLI and the docs)."""
    return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}
