"""Where a batched serving forward spends its CPU time, by operator (torch.profiler).

Runs the server's scorer in process (the default model, bf16 where the CPU has it, the cached
instruction prefix, 16 inputs a forward as at 16 concurrent requests) over XSTest + OpenAI
Moderation inputs, profiles a few batches and writes the operator table as JSON (self CPU time
and share per operator, and the share of matrix multiplies) and as text beside it.

    python benchmarks/forward_profile.py --output benchmarks/results/forward_profile.json   # ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

#: the operators that are matrix multiplies (the rest is what the compute ceiling counts as free)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def _profile(scorer: Any, texts: list[str], batch_size: int, batches: int) -> Any:
    """torch.profiler's operator averages over ``batches`` batches of ``texts``, after one batch of warm-up."""
    from torch.profiler import ProfilerActivity, profile

    scorer.score(texts[:batch_size])  # warm-up and the prefix cache, not profiled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, batches + 1):
            scorer.score(texts[i * batch_size : (i + 1) * batch_size])
    return prof.key_averages()


def _op_table(events: Any) -> tuple[float, list[dict[str, Any]]]:
    """The total self CPU time (microseconds) and each operator's seconds, share and calls, largest first."""
    total = sum(e.self_cpu_time_total for e in events)
    rows = [(e.key, e.self_cpu_time_total, e.count) for e in events]
    ops = [
        {"op": key, "self_cpu_s": t / 1e6, "share": t / total, "calls": calls}
        for key, t, calls in sorted(rows, key=lambda r: -r[1])
    ]
    return total, ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=4, help="profiled batches of --batch-size inputs")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    try:
        from .serve_bench import load_inputs
    except ImportError:  # run as a script
        from serve_bench import load_inputs  # type: ignore[no-redef]

    from guardcal.backends.precision import resolve_dtype
    from guardcal.models.loading import load_model
    from guardcal.scoring.scorer import HFScorer

    dtype = resolve_dtype("auto")
    loaded = load_model("default", dtype=dtype)
    scorer = HFScorer(loaded.model, loaded.tokenizer, prefix_cache=True, batch_size=args.batch_size)
    texts = load_inputs(args.batch_size * (args.batches + 1))
    events = _profile(scorer, texts, args.batch_size, args.batches)
    total, ops = _op_table(events)
    result = {
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "inputs": args.batch_size * args.batches,
        "batch_size": args.batch_size,
        "self_cpu_s_total": total / 1e6,
        "matmul_share": sum(r["share"] for r in ops if r["op"] in MATMUL_OPS),
        "top_ops": ops[:20],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    table = events.table(sort_by="self_cpu_time_total", row_limit=20)
    args.output.with_suffix(".txt").write_text(table + "\n")
    print(table)
    print(f"matrix multiplies (incl. attention): {result['matmul_share']:.0%} of self CPU time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
