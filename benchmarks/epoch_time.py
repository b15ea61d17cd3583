"""Wall time of a cpu-small epoch per method, from a few real training steps.

Runs ``guardcal train --method M --profile cpu-small --max-steps N`` for each method (or reads
runs already written, ``--from-runs``), takes the median ``step_time`` of the steps after the
first (which pays one-off costs) from each run's ``log.jsonl``, and multiplies by the optimiser
steps in one epoch of the 500-row training split (the trainer's own step/epoch ratio).

    python benchmarks/epoch_time.py --output benchmarks/results/epoch_time.json            # ~20 min idle
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


def run(method: str, workdir: Path, steps: int) -> Path:
    out = workdir / method
    cmd = [sys.executable, "-m", "guardcal.cli", "train", "--method", method, "--profile", "cpu-small"]
    cmd += ["--max-steps", str(steps), "--output", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def summarise(method: str, out: Path) -> dict[str, Any]:
    config = json.loads((out / "train_config.json").read_text())
    rows = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
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
    return {
        "step_times_s": [round(t, 1) for t in times],
        "median_step_s": round(median, 1),
        "rows_per_step": per_step,
        "steps_per_epoch": round(steps, 2),
        "epoch_minutes": round(steps * median / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("out/epoch_time"))
    parser.add_argument("--from-runs", type=Path, help="a folder with one finished run per method: do not train")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    result: dict[str, Any] = {"methods": {}}
    for method in METHODS:
        out = args.from_runs / method if args.from_runs else run(method, args.workdir, args.steps)
        result["methods"][method] = summarise(method, out)
        print(method, json.dumps(result["methods"][method]), flush=True)
    result["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
