"""Peak memory of a cpu-small GRPO-family run: a whole micro-batch per forward vs ``--loss-row-chunk``.

Runs ``guardcal train --method cal-grpo --profile cpu-small --max-steps N`` once per chunk size, in
this order, in one session (the first is the baseline: the whole 16-completion micro-batch in one
forward and backward, as before), and reports each run's peak RSS (the child's own ``ru_maxrss``),
its median step time, and its per-step losses beside the baseline's. LoRA dropout is off in every
run: with it on, each chunk draws its own dropout masks, so the numbers would differ by the draw,
not by the chunking. Equal losses at step 2 also mean equal gradients at step 1.

    python benchmarks/grpo_memory.py --output benchmarks/results/grpo_memory.json   # ~10 min idle

A run folder that already holds a finished run (``--workdir``) is read, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from benchmarks.epoch_time import run, step_rows, summarise

METHOD = "cal-grpo"
COMPARED = ("loss", "loss/policy", "loss/ce", "reward", "grad_norm")


def measure(workdir: Path, steps: int, chunk: int) -> dict[str, Any]:
    flags = ("--loss-row-chunk", str(chunk), "--lora-dropout", "0", "--eval-limit", "0")
    out = workdir / f"chunk{chunk}"
    if not (out / "train_summary.json").is_file() or not (out / "peak_rss.json").is_file():  # else: reuse it
        out = run(METHOD, workdir, steps, flags=flags, name=f"chunk{chunk}")
    summary = summarise(METHOD, out)
    summary["flags"] = list(flags)
    summary["per_step"] = [{k: r[k] for k in COMPARED if k in r} for r in step_rows(out)]
    return summary


def compare(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the baseline and the largest relative difference of each logged number."""
    diffs: dict[str, float] = {}
    for a, b in zip(base["per_step"], other["per_step"], strict=True):
        for key in a:
            scale = max(abs(a[key]), 1e-12)
            diffs[key] = max(diffs.get(key, 0.0), abs(a[key] - b[key]) / scale)
    return {
        "peak_rss_ratio": round(other["peak_rss_gb"] / base["peak_rss_gb"], 2),
        "step_time_ratio": round(other["median_step_s"] / base["median_step_s"], 2),
        "max_relative_difference": {k: float(f"{v:.2g}") for k, v in diffs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 2], help="row chunks to compare with 0")
    parser.add_argument("--workdir", type=Path, default=Path("out/grpo_memory"))
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    runs = {0: measure(args.workdir, args.steps, 0)}
    print("chunk 0 (baseline)", json.dumps({k: runs[0][k] for k in ("peak_rss_gb", "median_step_s")}), flush=True)
    result: dict[str, Any] = {"method": METHOD, "profile": "cpu-small", "steps": args.steps, "runs": {}}
    for chunk in args.chunks:
        runs[chunk] = measure(args.workdir, args.steps, chunk)
        result["runs"][str(chunk)] = {**runs[chunk], "vs_whole_micro_batch": compare(runs[0], runs[chunk])}
        print(f"chunk {chunk}", json.dumps(result["runs"][str(chunk)]["vs_whole_micro_batch"]), flush=True)
    result["runs"]["0"] = runs[0]
    result["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
