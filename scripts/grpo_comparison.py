"""GRPO vs calibration-aware GRPO from the shipped guard: same start, same budget, same seeds.

Issue 21 asks for the paper's comparison (arXiv 2601.13284) where both methods learn. Every run
starts from the shipped default's LoRA (it already classifies; a pooled head the default carries is
left out, since GRPO trains the decision token), trains ``--steps`` optimiser steps of the
cpu-small GRPO profile in the paper's reasoning mode (16 reasoning tokens, then the forced
decision), at one learning rate, once per seed, and is scored on the whole calibration split by the
training's own evaluation callback (the same scorer and input windows for every run), every
``--eval-steps`` steps. The start is scored the same way, by ``guardcal evaluate``, and so are the
start and each final adapter on the ``--also`` datasets (e.g. XSTest, the paper's out-of-distribution
set). Runs and scores that have finished are not run again, so the script resumes after an
interruption. Writes ``comparison.json`` (each run's evaluations, and its training rollouts' share
with q > 0.99 per step), ``comparison.md`` and ``comparison.png``.

The first command below wrote ``results/grpo-from-guard`` at commit 6a71dd7, when the default was
guard v1; run today it starts from v5's LoRA and would overwrite that table. The second wrote
``results/grpo-from-guard/v5``.

    python scripts/grpo_comparison.py --workdir runs/grpo-cmp --output results/grpo-from-guard
    python scripts/grpo_comparison.py --workdir runs/grpo-v5 --output results/grpo-from-guard/v5 \\
        --steps 24 --eval-steps 12 --also xstest
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

METHODS = ("grpo", "cal-grpo")
CALIB = "openai-moderation:calib"
METRICS = ("accuracy", "ece", "brier", "auroc_unsafe", "recall_safe", "recall_unsafe")


def guardcal(*args: str) -> None:
    cmd = [sys.executable, "-m", "guardcal.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def default_lora(workdir: Path) -> Path:
    """The shipped default's LoRA alone, as a training folder: its weights and the config it was trained with."""
    from guardcal.assets import DEFAULT_ADAPTER

    out = workdir / "start-lora"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(DEFAULT_ADAPTER / name, out / name)
    with_head = (DEFAULT_ADAPTER / "pooled_head.safetensors").is_file()
    config = "base_train_config.json" if with_head else "train_config.json"
    shutil.copyfile(DEFAULT_ADAPTER / config, out / "train_config.json")
    return out


def score(adapter: Path, out: Path, dataset: str, window: int, budget: int) -> dict[str, Any]:
    """``guardcal evaluate`` of one adapter on one dataset in the runs' reasoning mode, kept in ``out``
    (a folder that holds its metrics already is read, not scored again)."""
    if not (out / "metrics.json").is_file():
        guardcal(
            "evaluate", "--adapter", str(adapter), "--reasoning", "--max-new-tokens", str(budget),
            "--max-input-tokens", str(window), "--dataset", dataset, "--output", str(out), "--no-progress",
        )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics.get(dataset, metrics)


def train(workdir: Path, adapter: Path, method: str, seed: int, args: argparse.Namespace) -> Path:
    out = workdir / f"{method}-seed{seed}"
    if not (out / "train_summary.json").is_file():
        guardcal(
            "train", "--method", method, "--profile", "cpu-small", "--adapter", str(adapter), "--seed", str(seed),
            "--max-steps", str(args.steps), "--learning-rate", str(args.learning_rate),
            "--max-input-tokens", str(args.window), "--reasoning-budget", str(args.budget),
            "--eval-limit", "300", "--eval-steps", str(args.eval_steps or args.steps), "--save-steps", "2",
            "--output", str(out),
        )  # fmt: skip
    return out


def final_eval(out: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/ece" in r]
    steps = [r for r in rows if "loss" in r]
    record = {k: evals[-1].get(f"eval/{k}") for k in METRICS}
    record["step"] = evals[-1]["step"]
    record["trajectory"] = [{"step": r["step"], **{k: r.get(f"eval/{k}") for k in METRICS}} for r in evals]
    record["train_reward"] = [round(r["reward"], 3) for r in steps if "reward" in r]
    record["train_q_gt_0.99"] = [round(r["decision/q_gt_0.99"], 3) for r in steps if "decision/q_gt_0.99" in r]
    return record


def plot(start: dict[str, Any], runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Calib accuracy and ECE at each evaluation, and the training rollouts' share with q > 0.99, per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, run in runs.items():
        style = {"color": "C0" if name.startswith("grpo") else "C3", "linestyle": "-" if name.endswith("0") else "--"}
        points = [{"step": 0, **start}, *run["trajectory"]]
        for ax, key in zip(axes[:2], ("accuracy", "ece"), strict=True):
            ax.plot([p["step"] for p in points], [p[key] for p in points], marker="o", label=name, **style)
        q = run["train_q_gt_0.99"]
        axes[2].plot(range(1, len(q) + 1), q, label=name, **style)
    for ax, title in zip(axes, ("calib accuracy", "calib ECE", "rollouts with q > 0.99 (training)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(start: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    header = "| run | accuracy | ECE | Brier | AUROC (P(unsafe)) | recall safe | recall unsafe |"
    lines = [header, "|---|---|---|---|---|---|---|"]

    def row(name: str, m: dict[str, Any]) -> str:
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), float) else "–" for k in METRICS]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines.append(row("start", start))
    lines += [row(name, m) for name, m in runs.items()]
    return "\n".join(lines) + "\n"


def score_also(adapter: Path, folders: dict[str, Path], dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    """The start and each run's final adapter scored on ``dataset`` (each kept beside its run's folder)."""
    scored = {"start": score(adapter, args.workdir / f"start-{dataset}", dataset, args.window, args.budget)}
    for name, folder in folders.items():
        scored[name] = score(folder, folder.with_name(f"{folder.name}-{dataset}"), dataset, args.window, args.budget)
    return {name: {k: m.get(k) for k in METRICS} for name, m in scored.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/grpo-cmp"))
    parser.add_argument("--output", type=Path, default=Path("results/grpo-from-guard"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--window", type=int, default=128, help="input tokens per window (training and scoring)")
    parser.add_argument("--budget", type=int, default=16, help="reasoning tokens")
    parser.add_argument("--eval-steps", type=int, default=0, help="score calib every N steps (0: at the end only)")
    parser.add_argument(
        "--also", nargs="*", default=[], help="datasets the start and each final adapter are scored on"
    )
    args = parser.parse_args()
    adapter = default_lora(args.workdir)
    start = score(adapter, args.workdir / "start", CALIB, args.window, args.budget)
    folders, runs = {}, {}
    for seed in args.seeds:
        for method in METHODS:
            folders[f"{method} seed {seed}"] = train(args.workdir, adapter, method, seed, args)
            runs[f"{method} seed {seed}"] = final_eval(folders[f"{method} seed {seed}"])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"settings": settings, "start": {k: start.get(k) for k in METRICS}, "runs": runs, "also": {}}
    report = f"Calibration split ({CALIB}, the training's evaluation callback):\n\n" + table(result["start"], runs)
    for dataset in args.also:
        result["also"][dataset] = score_also(adapter, folders, dataset, args)
        picked = result["also"][dataset]
        report += f"\n{dataset} (the final adapters, `guardcal evaluate`):\n\n"
        report += table(picked["start"], {name: m for name, m in picked.items() if name != "start"})
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "comparison.md").write_text(report)
    plot(result["start"], runs, args.output / "comparison.png")
    print(report)


if __name__ == "__main__":
    main()
