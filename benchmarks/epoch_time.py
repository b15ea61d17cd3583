"""Wall time of a cpu-small epoch per method, from a few real training steps.

Runs ``guardcal train --method M --profile cpu-small --max-steps N`` for each method (or reads
runs already written, ``--from-runs``), takes the median ``step_time`` of the steps after the
first (which pays one-off costs) from each run's ``log.jsonl``, and multiplies by the optimiser
steps in one epoch of the 500-row training split (the trainer's own step/epoch ratio).

The baseline, run in the same session: ``--baseline cal-grpo`` trains that method again the way
guardcal did before (gradient checkpointing on, TRL's fused LM head scoring every prompt and
completion position on the CPU), and the result gives the ratio. The two runs' losses agree:
neither change alters the numbers, only the time.

    python benchmarks/epoch_time.py --output benchmarks/results/epoch_time.json            # ~25 min idle
    python benchmarks/epoch_time.py --from-runs /tmp/steps --output benchmarks/results/epoch_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

METHODS = ("grpo", "cal-grpo", "sft")


#: the baseline's flags: how guardcal trained before (checkpointing on, the LM head over every position)
BASELINE_FLAGS = ["--gradient-checkpointing", "--no-compact-lm-head"]


def run(
    method: str, workdir: Path, steps: int, baseline: bool = False, flags: tuple[str, ...] = (), name: str = ""
) -> Path:
    """One ``guardcal train`` child (cpu-small, ``steps`` steps, ``flags`` added); its peak RSS is written beside."""
    out = workdir / (name or (f"{method}-baseline" if baseline else method))
    cmd = [sys.executable, "-m", "guardcal.cli", "train", "--method", method, "--profile", "cpu-small"]
    cmd += ["--max-steps", str(steps), "--output", str(out), *(BASELINE_FLAGS if baseline else []), *flags]
    child = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not the max over all children
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {child.returncode}")
    (out / "peak_rss.json").write_text(json.dumps({"peak_rss_gb": round(usage.ru_maxrss / 1024**2, 1)}) + "\n")
    return out


def step_rows(out: Path) -> list[dict[str, Any]]:
    """The per-step records of a run's log.jsonl (the evaluation callback's lines carry no loss)."""
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def summarise(method: str, out: Path) -> dict[str, Any]:
    config = json.loads((out / "train_config.json").read_text())
    rows = step_rows(out)
    if len(rows) < 2:
        raise SystemExit(f"{out}/log.jsonl has {len(rows)} step(s); run at least 2 (--steps)")
    if "step_time" in rows[0]:  # TRL's own timing (the GRPO family)
        times = [r["step_time"] for r in rows]
    else:  # SFT: the gaps between consecutive step logs (the first step has none)
        times = [b["time"] - a["time"] for a, b in zip(rows, rows[1:], strict=False)]
        times = [times[0], *times]  # stands in for the first step, which the median skips
    per_step = config["per_device_batch"] * config["grad_accum"]
    if method != "sft":
        per_step //= config["num_generations"]  # completions per step / completions per prompt = prompts
    steps = rows[-1]["step"] / rows[-1]["epoch"]  # the trainer's own count (it may drop a last partial batch)
    median = statistics.median(times[1:] or times)
    rss = out / "peak_rss.json"
    return {
        "step_times_s": [round(t, 1) for t in times],
        "median_step_s": round(median, 1),
        "rows_per_step": per_step,
        "steps_per_epoch": round(steps, 2),
        "epoch_minutes": round(steps * median / 60, 1),
        "peak_rss_gb": json.loads(rss.read_text())["peak_rss_gb"] if rss.is_file() else None,
        "losses": [r["loss"] for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("out/epoch_time"))
    parser.add_argument("--from-runs", type=Path, help="a folder with one finished run per method: do not train")
    parser.add_argument("--baseline", choices=(*METHODS, "none"), default="cal-grpo", help="method to rerun as before")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    result: dict[str, Any] = {"methods": {}}
    for method in METHODS:
        out = args.from_runs / method if args.from_runs else run(method, args.workdir, args.steps)
        result["methods"][method] = summarise(method, out)
        print(method, json.dumps(result["methods"][method]), flush=True)
    if args.baseline != "none":
        method = args.baseline
        out = args.from_runs / f"{method}-baseline" if args.from_runs else run(method, args.workdir, args.steps, True)
        before = summarise(method, out)
        now = result["methods"][method]
        result["baseline"] = {
            "method": method,
            "settings": "gradient checkpointing on; TRL's fused LM head over every position",
            **before,
            "speedup": round(before["median_step_s"] / now["median_step_s"], 2),
            "max_abs_loss_difference": max(abs(a - b) for a, b in zip(before["losses"], now["losses"], strict=True)),
        }
        print("baseline", json.dumps(result["baseline"]), flush=True)
    result["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
