"""GRPO vs calibration-aware GRPO from the shipped guard: same start, same budget, same seeds.

Issue 21 asks for the paper's comparison (arXiv 2601.13284) where both methods learn. Every run
starts from the shipped default adapter (``--adapter default``: it already classifies), trains
``--steps`` optimiser steps of the cpu-small GRPO profile in the paper's reasoning mode (16
reasoning tokens, then the forced decision), at one learning rate, once per seed, and is scored on
the whole calibration split by the training's own evaluation callback (the same scorer and input
windows for every run). The start is scored the same way, by ``guardcal evaluate``. Runs that have
finished are not run again, so the script resumes after an interruption.

    python scripts/grpo_comparison.py --workdir runs/grpo-cmp --output results/grpo-from-guard
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

METHODS = ("grpo", "cal-grpo")
METRICS = ("accuracy", "ece", "brier", "auroc_unsafe", "recall_safe", "recall_unsafe")


def guardcal(*args: str) -> None:
    cmd = [sys.executable, "-m", "guardcal.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def score_start(workdir: Path, window: int, budget: int) -> dict[str, Any]:
    out = workdir / "start"
    if not (out / "metrics.json").is_file():
        guardcal(
            "evaluate", "--adapter", "default", "--reasoning", "--max-new-tokens", str(budget),
            "--max-input-tokens", str(window), "--dataset", "openai-moderation:calib", "--output", str(out),
            "--no-progress",
        )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics.get("openai-moderation:calib", metrics)


def train(workdir: Path, method: str, seed: int, args: argparse.Namespace) -> Path:
    out = workdir / f"{method}-seed{seed}"
    if not (out / "train_summary.json").is_file():
        guardcal(
            "train", "--method", method, "--profile", "cpu-small", "--adapter", "default", "--seed", str(seed),
            "--max-steps", str(args.steps), "--learning-rate", str(args.learning_rate),
            "--max-input-tokens", str(args.window), "--reasoning-budget", str(args.budget),
            "--eval-limit", "300", "--eval-steps", str(args.steps), "--save-steps", "2",
            "--output", str(out),
        )  # fmt: skip
    return out


def final_eval(out: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/ece" in r]
    steps = [r for r in rows if "loss" in r]
    record = {k: evals[-1].get(f"eval/{k}") for k in METRICS}
    record["step"] = evals[-1]["step"]
    record["train_reward"] = [round(r["reward"], 3) for r in steps if "reward" in r]
    return record


def table(start: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    header = "| run | accuracy | ECE | Brier | AUROC (P(unsafe)) | recall safe | recall unsafe |"
    lines = [header, "|---|---|---|---|---|---|---|"]

    def row(name: str, m: dict[str, Any]) -> str:
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), float) else "–" for k in METRICS]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines.append(row("start (shipped guard)", start))
    lines += [row(name, m) for name, m in runs.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/grpo-cmp"))
    parser.add_argument("--output", type=Path, default=Path("results/grpo-from-guard"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--window", type=int, default=128, help="input tokens per window (training and scoring)")
    parser.add_argument("--budget", type=int, default=16, help="reasoning tokens")
    args = parser.parse_args()
    start = score_start(args.workdir, args.window, args.budget)
    runs = {}
    for seed in args.seeds:
        for method in METHODS:
            runs[f"{method} seed {seed}"] = final_eval(train(args.workdir, method, seed, args))
    args.output.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"settings": settings, "start": {k: start.get(k) for k in METRICS}, "runs": runs}
    (args.output / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "comparison.md").write_text(table(result["start"], runs))
    print(table(result["start"], runs))


if __name__ == "__main__":
    main()
