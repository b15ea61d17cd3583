"""Training step cost: cal-GRPO vs stock GRPO on the same batch, and SFT.

One generation batch (the cpu-small profile's 8 prompts x 4 rollouts, budget-forced
reasoning) is generated once; then the GRPO and cal-GRPO trainers (same base model,
same LoRA initialisation) each compute the loss and its backward pass on exactly
that batch, interleaved, ``--repeats`` times. Their ratio is cal-GRPO's overhead
(the decision-position hook, one (n, V) LM-head matmul, the CE term); the target is
<= 1.05. SFT is timed on one batch of its own (decision-token loss, direct prompt).
The rollout generation is timed too, since it is part of every GRPO step: guardcal's rollout
(one prefill per distinct prompt, one KV cache through the reasoning and the forced decision read)
against the obvious way, kept here as the baseline: ``model.generate`` for the reasoning, then a
fresh forward over prompt + reasoning + suffix for the decision (what guardcal did before).

    python benchmarks/train_bench.py [--quick] [--rollout-only] --output benchmarks/results/train_bench.json
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

from guardcal.core.prompt import THINK_CLOSE
from guardcal.train.rollout import ForcedDecisionRollout, cut_reasoning, last_position_logits, left_pad


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


class GenerateThenForward(ForcedDecisionRollout):
    """The baseline rollout: ``generate`` every row's reasoning (prompt prefilled once per row), then
    re-run the whole sequence for the decision position. Same sampling distribution as guardcal's."""

    def _reason_then_read(
        self, prompt_ids: list[list[int]], suffix: list[int], model: Any, tok: Any
    ) -> tuple[list[list[int]], torch.Tensor]:
        batch = left_pad(prompt_ids, tok.pad_token_id, model)
        batch.pop("position_ids")
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.budget,
            stop_strings=[THINK_CLOSE],
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
        )
        stops = {tok.eos_token_id, tok.pad_token_id}
        reasoning = [cut_reasoning(ids, stops, tok) for ids in out[:, batch["input_ids"].shape[1] :].tolist()]
        seqs = [p + r + suffix for p, r in zip(prompt_ids, reasoning, strict=True)]
        return reasoning, last_position_logits(seqs, model, tok.pad_token_id)


def _time_rollouts(trainer: Any, rows: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """guardcal's cached rollout vs generate-then-forward on the same prompts, interleaved (median seconds)."""
    cached = trainer.rollout_func
    baseline = GenerateThenForward(cached.template, cached.budget, cached.temperature, cached.label_ids)
    prompts = [r["prompt"] for r in rows]
    times: dict[str, list[float]] = {"cached": [], "generate_then_forward": []}
    for i in range(repeats + 1):  # the first round is a warm-up
        for name, rollout in (("cached", cached), ("generate_then_forward", baseline)):
            torch.manual_seed(i)
            started = time.perf_counter()
            rollout(prompts, trainer)
            if i:
                times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "rollouts": len(prompts),
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "speedup": round(med["generate_then_forward"] / med["cached"], 2),
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }


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


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def _tensors(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _grpo_rows(trainer: Any, n_prompts: int, group: int) -> list[dict[str, Any]]:
    rows = [trainer.train_dataset[i] for i in range(n_prompts)]
    return [dict(r) for r in rows for _ in range(group)]


def main() -> None:
    args = _parse_args()
    repeats = 2 if args.quick else args.repeats

    cal_cfg, cal = _build("cal-grpo", args.workdir, args.data_dir, seed=0)
    _stage("built the cal-grpo trainer")
    group = cal_cfg.num_generations
    n_prompts = cal_cfg.per_device_batch * cal_cfg.grad_accum // group
    rows = _grpo_rows(cal, n_prompts, group)
    rollout = _time_rollouts(cal, rows, repeats)
    _stage(f"rollouts: {json.dumps(rollout)}")
    if args.rollout_only:
        _write({"rollout": rollout, "machine": _machine(), "profile": cal_cfg.profile}, args.output)
        return

    micro, tokens, generate_s = _generate_batch(cal, rows, cal_cfg.grad_accum)
    _, grpo = _build("grpo", args.workdir, args.data_dir, seed=0)

    _stage(f"generated {len(rows)} rollouts in {generate_s:.1f} s")
    times = _time_grpo_pair(grpo, cal, micro, repeats)
    del cal, grpo

    _stage("timed grpo and cal-grpo")
    sft_cfg, sft_micro, sft_tokens, sft_times = _time_sft(args.workdir, args.data_dir, repeats)
    times["sft"] = sft_times

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
        "rollout": rollout,
        "machine": _machine(),
        "profile": sft_cfg.profile,
    }
    _write(result, args.output)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed repeats instead of --repeats")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--rollout-only", action="store_true", help="time the two rollout implementations only")
    parser.add_argument("--data-dir", default=os.environ.get("GUARDCAL_DATA_DIR"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("out/train_bench"))
    return parser.parse_args()


def _generate_batch(cal: Any, rows: list[dict[str, Any]], grad_accum: int) -> tuple[list[Any], int, float]:
    """One generation batch from the cal-GRPO trainer (seed 0): its micro-batches, its prompt + completion
    tokens and the seconds it took."""
    torch.manual_seed(0)
    started = time.perf_counter()
    inputs = cal._generate_and_score_completions(rows)
    generate_s = time.perf_counter() - started
    tokens = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
    micro = split_tensor_dict(inputs, grad_accum)  # what TRL feeds compute_loss, one per accumulation step
    return micro, tokens, generate_s


def _time_grpo_pair(grpo: Any, cal: Any, micro: list[Any], repeats: int) -> dict[str, list[float]]:
    """GRPO and cal-GRPO on the same micro-batches: one untimed warm-up each, then ``repeats`` timed
    rounds, interleaved (seconds per round)."""
    times: dict[str, list[float]] = {"grpo": [], "cal-grpo": []}
    for trainer in (grpo, cal):  # warm-up, not timed
        _loss_and_backward(trainer, micro)
    _stage("warm-up done")
    for _ in range(repeats):
        times["grpo"].append(_loss_and_backward(grpo, micro))
        times["cal-grpo"].append(_loss_and_backward(cal, micro))
    return times


def _time_sft(workdir: Path, data_dir: str | None, repeats: int) -> tuple[Any, list[dict[str, Any]], int, list[float]]:
    """SFT on one batch of its own: the config, the micro-batches, their tokens and ``repeats`` timed
    steps (after one untimed)."""
    sft_cfg, sft = _build("sft", workdir, data_dir, seed=0)
    loader = iter(sft.get_train_dataloader())
    sft_micro = [_tensors(next(loader)) for _ in range(sft_cfg.grad_accum)]
    sft_tokens = sum(int(b["attention_mask"].sum()) for b in sft_micro)
    _loss_and_backward(sft, sft_micro)
    return sft_cfg, sft_micro, sft_tokens, [_loss_and_backward(sft, sft_micro) for _ in range(repeats)]


def _write(result: dict[str, Any], output: Path) -> None:
    """``result`` as JSON in ``output``, and printed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
