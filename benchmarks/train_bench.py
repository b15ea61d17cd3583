"""Training step cost: cal-GRPO vs stock GRPO on the same batch, and SFT.

One generation batch (the cpu-small profile's 8 prompts x 4 rollouts, budget-forced
reasoning) is generated once; then the GRPO and cal-GRPO trainers (same base model,
same LoRA initialisation) each compute the loss and its backward pass on exactly
that batch, interleaved, ``--repeats`` times. Their ratio is cal-GRPO's overhead
(the decision-position hook, one (n, V) LM-head matmul, the CE term); the target is
<= 1.05. SFT is timed on one batch of its own (decision-token loss, direct prompt).
The rollout generation is timed too, since it is part of every GRPO step.

    python benchmarks/train_bench.py [--quick] --output benchmarks/results/train_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from trl.trainer.utils import split_tensor_dict


def _build(method: str, output: Path, data_dir: str | None, seed: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, set_seed

    from guardcal.models.loading import load_tokenizer, resolve_model
    from guardcal.train.config import build_config
    from guardcal.train.runner import build_trainer

    cfg = build_config({"method": method, "output": str(output / method), "data_dir": data_dir, "seed": seed})
    set_seed(seed)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=torch.float32)
    trainer = build_trainer(cfg, model, tokenizer, callbacks=[])
    trainer.current_gradient_accumulation_steps = cfg.grad_accum
    if trainer.args.gradient_checkpointing:  # what Trainer.train() switches on before the first step
        trainer.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
        )
    trainer.model.train()
    return cfg, trainer


def _loss_and_backward(trainer: Any, micro_batches: list[dict[str, Any]]) -> float:
    """One optimiser step's worth of work: loss + backward over every micro-batch."""
    trainer.model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    for inputs in micro_batches:
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
    return time.perf_counter() - started


def _stage(name: str) -> None:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"[train_bench] {name} (peak RSS so far {peak:.1f} GiB)", flush=True)


def _tensors(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _grpo_rows(trainer: Any, n_prompts: int, group: int) -> list[dict[str, Any]]:
    rows = [trainer.train_dataset[i] for i in range(n_prompts)]
    return [dict(r) for r in rows for _ in range(group)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed repeats instead of --repeats")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--data-dir", default=os.environ.get("GUARDCAL_DATA_DIR"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("out/train_bench"))
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats

    cal_cfg, cal = _build("cal-grpo", args.workdir, args.data_dir, seed=0)
    _, grpo = _build("grpo", args.workdir, args.data_dir, seed=0)
    _stage("built the grpo and cal-grpo trainers")
    group = cal_cfg.num_generations
    n_prompts = cal_cfg.per_device_batch * cal_cfg.grad_accum // group
    rows = _grpo_rows(cal, n_prompts, group)

    torch.manual_seed(0)
    started = time.perf_counter()
    inputs = cal._generate_and_score_completions(rows)
    generate_s = time.perf_counter() - started
    tokens = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
    micro = split_tensor_dict(inputs, cal_cfg.grad_accum)  # what TRL feeds compute_loss, one per accumulation step

    _stage(f"generated {len(rows)} rollouts in {generate_s:.1f} s")
    times: dict[str, list[float]] = {"grpo": [], "cal-grpo": []}
    for trainer in (grpo, cal):  # warm-up, not timed
        _loss_and_backward(trainer, micro)
    _stage("warm-up done")
    for _ in range(repeats):
        times["grpo"].append(_loss_and_backward(grpo, micro))
        times["cal-grpo"].append(_loss_and_backward(cal, micro))
    del cal, grpo

    _stage("timed grpo and cal-grpo")
    sft_cfg, sft = _build("sft", args.workdir, args.data_dir, seed=0)
    loader = iter(sft.get_train_dataloader())
    sft_micro = [_tensors(next(loader)) for _ in range(sft_cfg.grad_accum)]
    sft_tokens = sum(int(b["attention_mask"].sum()) for b in sft_micro)
    _loss_and_backward(sft, sft_micro)
    times["sft"] = [_loss_and_backward(sft, sft_micro) for _ in range(repeats)]

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "loss + backward over one optimiser step's micro-batches (median of repeats); "
        "grpo and cal-grpo on the same batch",
        "repeats": repeats,
        "grpo_batch": {"completions": len(rows), "tokens": tokens, "rollout_generation_s": round(generate_s, 3)},
        "sft_batch": {"sequences": sum(int(b["input_ids"].shape[0]) for b in sft_micro), "tokens": sft_tokens},
        "step_s": {k: round(v, 4) for k, v in med.items()},
        "tokens_per_s": {
            "grpo": round(tokens / med["grpo"], 1),
            "cal-grpo": round(tokens / med["cal-grpo"], 1),
            "sft": round(sft_tokens / med["sft"], 1),
        },
        "ratio_cal_grpo_vs_grpo": round(med["cal-grpo"] / med["grpo"], 4),
        "target_ratio": 1.05,
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "profile": sft_cfg.profile,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
