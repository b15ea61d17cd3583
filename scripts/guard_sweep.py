"""Find the guard recipe on a GPU: an SFT sweep chosen on the calibration split, then GRPO vs cal-GRPO.

    python scripts/guard_sweep.py --out runs/sweep [--parallel 4] [--deadline 480] [--smoke]

Stages (each runs its `guardcal train` / `guardcal evaluate` processes side by side; a 135M model
leaves a GPU mostly idle, so parallel runs cost little more than one):

1. SFT on the decision token over a learning-rate grid, evaluated on the whole calibration split
   every epoch (AUROC of P(unsafe), accuracy, per-class recall in each run's log.jsonl). The best
   (run, epoch) by calibration AUROC is copied to OUT/sft-best (its checkpoint's adapter).
2. OUT/sft-best is scored once on calib, test and XSTest (direct mode, the serving window).
3. GRPO and calibration-aware GRPO (arXiv 2601.13284) from OUT/sft-best, two seeds each, plus one
   seed of each from the base model; each is scored on calib, test and XSTest in reasoning mode.

Never chooses anything on test or XSTest: those predictions are written for the scorecard only.
Past --deadline seconds, running processes are stopped and what finished is kept (summary.json
says which). --smoke shrinks everything to a few steps and rows (a CPU check of the plumbing).
Needs a GPU for real sizes: on 2 CPU cores stage 1 alone takes hours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from guardcal.train.callbacks import read_evals

SPLITS = ["openai-moderation:calib", "openai-moderation:test", "xstest"]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=480.0, help="seconds; later processes are stopped")
    ap.add_argument("--lrs", default="3e-5,5e-5,1e-4,2e-4,5e-4,1e-3", help="SFT learning-rate grid")
    ap.add_argument("--sft-epochs", type=int, default=10)
    ap.add_argument("--window", type=int, default=1024, help="training budget and scoring window (tokens)")
    ap.add_argument("--rl-lr", type=float, default=1e-4)
    ap.add_argument("--rl-epochs", type=float, default=1.0)
    ap.add_argument("--reasoning-budget", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="a few steps and rows: checks the plumbing on a CPU")
    ap.add_argument("--stages", default="sft,eval,rl", help="comma list of sft, eval, rl")
    args = ap.parse_args()
    sweep = Sweep(args)
    stages = set(args.stages.split(","))
    if "sft" in stages:
        sweep.sft()
    if "eval" in stages:
        sweep.evaluate_best()
    if "rl" in stages:
        sweep.rl()
    sweep.write_summary()
    return 0


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a, self.out = args, args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "stages": {}}
        self.guardcal = [sys.executable, "-m", "guardcal.cli"]

    # -- process pool ---------------------------------------------------------------------------
    def run_all(self, jobs: list[tuple[str, list[str]]]) -> dict[str, int | None]:
        """Run (name, argv) jobs, --parallel at a time, logs in OUT/logs; None = stopped at the deadline."""
        (self.out / "logs").mkdir(exist_ok=True)
        pending, running, codes = list(jobs), {}, {}
        while pending or running:
            while pending and len(running) < self.a.parallel and self.left() > 0:
                name, argv = pending.pop(0)
                log = open(self.out / "logs" / f"{name}.log", "w")  # noqa: SIM115 - closed when the job ends
                running[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log)
                print(f"[{self.elapsed():6.0f}s] start {name}", flush=True)
            if not running and pending:  # deadline reached before they started
                codes.update({n: None for n, _ in pending})
                pending = []
                break
            time.sleep(1)
            for name, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    codes[name] = proc.returncode
                elif self.left() <= 0:
                    proc.terminate()
                    proc.wait(30)
                    codes[name] = None
                else:
                    continue
                log.close()
                del running[name]
                print(f"[{self.elapsed():6.0f}s] end {name}: {codes[name]}", flush=True)
        return codes

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.a.deadline - self.elapsed()

    def train_argv(self, name: str, method: str, extra: list[str]) -> tuple[str, list[str]]:
        argv = [*self.guardcal, "train", "--method", method, "--profile", "guard", "--output", str(self.out / name)]
        # gradient checkpointing: an SFT process peaked at 23 GB on a CPU without it (batch 16)
        argv += ["--max-input-tokens", str(self.a.window), "--gradient-checkpointing", *extra]
        if self.a.smoke:
            argv += ["--max-steps", "2", "--eval-limit", "6", "--eval-steps", "1", "--save-steps", "1"]
            argv += ["--per-device-batch", "8" if method != "sft" else "4"]
        return name, argv

    def eval_argv(self, name: str, adapter: Path, reasoning: bool) -> tuple[str, list[str]]:
        argv = [*self.guardcal, "evaluate", "--adapter", str(adapter), "--max-input-tokens", str(self.a.window)]
        argv += ["--no-progress", "--batch-size", "32", "--output", str(adapter / "eval")]
        if reasoning:
            argv += ["--reasoning", "--max-new-tokens", str(self.a.reasoning_budget)]
        if self.a.smoke:
            argv += ["--limit", "6"]
        for d in SPLITS:
            argv += ["--dataset", d]
        return name, argv

    # -- stages ---------------------------------------------------------------------------------
    def sft(self) -> None:
        jobs = []
        for lr in self.a.lrs.split(","):
            # one epoch = ceil(500 / 16) = 32 optimiser steps: evaluate and keep a checkpoint each epoch
            extra = ["--learning-rate", lr, "--epochs", str(self.a.sft_epochs), "--per-device-batch", "16"]
            extra += ["--grad-accum", "1", "--eval-steps", "32", "--save-steps", "32", "--eval-limit", "300"]
            extra += ["--keep-checkpoints", str(self.a.sft_epochs + 1), "--warmup-ratio", "0.1"]
            extra += ["--lr-scheduler", "cosine", "--lora-first-layer", "0"]
            jobs.append(self.train_argv(f"sft-lr{lr}", "sft", extra))
        codes = self.run_all(jobs)
        evals = []
        for name in codes:
            for rec in read_evals(self.out / name / "log.jsonl"):
                evals.append({"run": name, **rec})
        self.summary["stages"]["sft"] = {"codes": codes, "evals": evals}
        if not evals:
            return
        best = max(evals, key=lambda r: (r.get("eval/auroc_unsafe") or 0, r.get("eval/accuracy") or 0))
        src = self.out / best["run"] / f"checkpoint-{best['step']}"
        if not (src / ADAPTER_FILES[1]).is_file():  # the final evaluation after the last checkpoint
            src = self.out / best["run"]
        dst = self.out / "sft-best"
        dst.mkdir(exist_ok=True)
        for f in ADAPTER_FILES:
            shutil.copy2(src / f, dst / f)
        run_dir = self.out / best["run"]
        config = json.loads((run_dir / "train_config.json").read_text())
        config["chosen"] = {"checkpoint": src.name, "step": best["step"], "by": "calib AUROC of P(unsafe)"}
        (dst / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
        shutil.copy2(run_dir / "log.jsonl", dst / "log.jsonl")
        self.summary["stages"]["sft"]["best"] = best

    def evaluate_best(self) -> None:
        best = self.out / "sft-best"
        if (best / ADAPTER_FILES[1]).is_file():
            self.summary["stages"]["eval"] = self.run_all([self.eval_argv("eval-sft-best", best, reasoning=False)])

    def rl(self) -> None:
        start = self.out / "sft-best"
        rl = ["--learning-rate", str(self.a.rl_lr), "--epochs", str(self.a.rl_epochs), "--per-device-batch", "64"]
        rl += ["--grad-accum", "1", "--num-generations", "8", "--reasoning-budget", str(self.a.reasoning_budget)]
        rl += ["--eval-steps", "16", "--eval-limit", "300", "--save-steps", "1000"]
        jobs = []
        for method in ("grpo", "cal-grpo"):
            for seed in (0,) if self.a.smoke else (0, 1):
                if (start / ADAPTER_FILES[1]).is_file():
                    start_args = [*rl, "--seed", str(seed), "--adapter", str(start)]
                    jobs.append(self.train_argv(f"{method}-sft-s{seed}", method, start_args))
            if not self.a.smoke:
                jobs.append(self.train_argv(f"{method}-base-s0", method, [*rl, "--seed", "0"]))
        codes = self.run_all(jobs)
        done = [n for n, c in codes.items() if c == 0]
        ecodes = self.run_all([self.eval_argv(f"eval-{n}", self.out / n, reasoning=True) for n in done])
        self.summary["stages"]["rl"] = {
            "codes": codes,
            "eval_codes": ecodes,
            "evals": {n: read_evals(self.out / n / "log.jsonl") for n in codes},
        }

    def write_summary(self) -> None:
        self.summary["seconds"] = round(self.elapsed(), 1)
        self.summary["device"] = device_name()
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2, default=str) + "\n")
        print(json.dumps({k: v for k, v in self.summary.items() if k != "stages"}), flush=True)


def device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    except Exception as e:  # noqa: BLE001 - informative only
        return f"unknown ({e})"


if __name__ == "__main__":
    raise SystemExit(main())
