"""Serving throughput and latency of ``guardcal serve`` against a naive loop and the machine's compute ceiling.

Everything is measured in one run, so the ratios hold on a noisy machine:

- **guardcal**: the real server (``python -m guardcal.cli serve``) on 127.0.0.1 with each backend
  (transformers; vllm when ``import vllm`` works in ``--vllm-python``), the default model,
  non-reasoning mode, no calibration bundle (a fixed threshold); a bounded number of ``POST /classify``
  requests (inputs drawn from XSTest and the OpenAI Moderation test split, alternating) at
  concurrency 1, 4, 16 and 64: requests/s, p50/p95/p99 latency, peak RSS of the server.
- **naive baseline**: a plain transformers loop over the same inputs, one request at a time,
  float32, the full prompt every time: ``model(...)`` on the whole prompt, softmax at the last
  position; timed before the servers and again after them (``naive_rps`` pools both; the two
  halves show how much the machine drifted during the run). Only a few inputs are timed, so
  ``naive_rps_at_mean_length`` also rescales it to the servers' mean prompt length.
- **bare forward**: the same prompts as the concurrency-1 run, scored one at a time in process
  the way the server's backend runs them (its dtype, the cached prefix), without HTTP or
  batching; ``p50_c1_over_bare_forward`` is the server's overhead at concurrency 1.
- **ceiling**: measured matmul throughput (bf16 and float32 GFLOP/s, torch, this process's
  thread count; measured before and after the servers, the faster counts) and FLOPs per request
  = 2 x matmul parameters x tokens computed (+ the LM head once per window, at the decision
  position), for the full prompt and for the uncached part only.
- **long inputs** (level ``long``): inputs of at least ``LONG_MIN_TOKENS`` tokens (OpenAI Moderation
  training rows joined, under the 20,000-character limit), which the server scores whole as
  overlapping 1,024-token windows (``core.windows``), at concurrency ``LONG_CONCURRENCY``: req/s,
  latency, windows and tokens per request, and prompt tokens/s beside the short inputs' at the same
  concurrency (``long.tokens_per_s_vs_c4``: near 1 when a long input costs what its windows' tokens cost).

    python benchmarks/serve_bench.py --quick --output benchmarks/results/serve_bench.json
    python benchmarks/serve_bench.py --output benchmarks/results/serve_bench.json   # on an idle machine
    python benchmarks/serve_bench.py --tiny --levels c1,long --backends transformers --output /tmp/sb.json

Needs ``GUARDCAL_DATA_DIR`` (or ../shared/data) and the materialised default model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from .serve_bench_baselines import Baseline, baseline_results, in_process_batched_rps, matmul_gflops, set_ceiling
    from .serve_bench_config import (
        CONCURRENCY,
        DTYPES,
        LEVELS,
        LONG_CONCURRENCY,
        LONG_POOL,
        LONG_REQUESTS,
        NAIVE_REQUESTS,
        REQUESTS,
        SERVER_FLAGS,
        VARIANTS,
    )
    from .serve_bench_inputs import level_inputs, load_inputs, long_inputs, machine_info
    from .serve_bench_report import markdown, plot, summarise
    from .serve_bench_server import backend_available, bench_backend
except ImportError:  # run as a script: python benchmarks/NAME.py
    from serve_bench_baselines import (  # type: ignore[no-redef]
        Baseline,
        baseline_results,
        in_process_batched_rps,
        matmul_gflops,
        set_ceiling,
    )
    from serve_bench_config import (  # type: ignore[no-redef]
        CONCURRENCY,
        DTYPES,
        LEVELS,
        LONG_CONCURRENCY,
        LONG_POOL,
        LONG_REQUESTS,
        NAIVE_REQUESTS,
        REQUESTS,
        SERVER_FLAGS,
        VARIANTS,
    )
    from serve_bench_inputs import level_inputs, load_inputs, long_inputs, machine_info  # type: ignore[no-redef]
    from serve_bench_report import markdown, plot, summarise  # type: ignore[no-redef]
    from serve_bench_server import backend_available, bench_backend  # type: ignore[no-redef]

#: what the tests, serve_lockstep.py, forward_variants.py and forward_profile.py use from here
__all__ = [
    "CONCURRENCY",
    "LEVELS",
    "SERVER_FLAGS",
    "Baseline",
    "level_inputs",
    "load_inputs",
    "long_inputs",
    "machine_info",
    "main",
    "markdown",
    "set_ceiling",
    "summarise",
]

#: each level's (warm-up, timed) texts
Level = tuple[list[str], list[str]]


def main(argv: Sequence[str] | None = None) -> int:
    args, size, chosen = _parse_args(argv)
    sizes = {c: n for c, n in REQUESTS[size].items() if f"c{c}" in chosen}
    began = time.perf_counter()
    texts, over = _short_inputs(sizes)
    result: dict[str, Any] = {"size": size, "machine": machine_info(), "server_flags": SERVER_FLAGS}
    result["short_inputs_over_one_window_skipped"] = len(over)
    print(f"machine: {json.dumps(result['machine'])}", flush=True)

    base = _measure_ceiling(result, texts)
    n_naive = NAIVE_REQUESTS[size]
    naive_texts = texts[:n_naive]  # the first inputs the servers get too
    before = base.naive_times(naive_texts)
    print(f"naive {len(before) / sum(before):.2f} req/s; ceiling {result['ceiling_rps_full_prompt']:.2f} req/s")
    levels = level_inputs(texts, sizes)
    result["levels"] = {f"c{c}": base.flops(timed) for c, (_, timed) in levels.items()}
    long_level = _long_level(result, base, size) if "long" in chosen else None
    served = _in_process(result, base, levels)

    _bench_backends(result, args, levels, long_level)
    after = base.naive_times(naive_texts)  # the same inputs again after the servers: the gap is drift
    _finish_baselines(result, base, naive_texts, before, after, served)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - began
    summarise(result)
    _write(result, args.output)
    return 0


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, str, list[str]]:
    """The arguments, the run size (tiny, quick or full) and the levels chosen."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (finishes in a few minutes)")
    parser.add_argument("--tiny", action="store_true", help="a handful of requests: checks the run works")
    parser.add_argument("--levels", default=",".join(LEVELS), help=f"comma list of {', '.join(LEVELS)} (default: all)")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write (a PNG is written beside it)")
    parser.add_argument(
        "--backends", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)} (default: all)"
    )
    parser.add_argument(
        "--vllm-python",
        default=os.environ.get("GUARDCAL_VLLM_PYTHON", sys.executable),
        help="python of an environment with vllm and guardcal installed (default: $GUARDCAL_VLLM_PYTHON or this one)",
    )
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    chosen = [x.strip() for x in args.levels.split(",") if x.strip()]
    if set(chosen) - set(LEVELS) or not any(x.startswith("c") for x in chosen):
        parser.error(f"--levels {args.levels!r}: give a comma list of {', '.join(LEVELS)} with at least one c<N>")
    return args, size, chosen


def _short_inputs(sizes: dict[int, int]) -> tuple[list[str], list[str]]:
    """The short levels' texts (warm-up and timed) and the inputs skipped for needing more than one window."""
    from guardcal.core.windows import DEFAULT_MAX_TOKENS
    from guardcal.models.loading import load_tokenizer

    tokenizer = load_tokenizer("default")
    over: list[str] = []
    texts = load_inputs(  # short levels: inputs that fit one window (the long level sends the others)
        sum(sizes.values()) + sum(sizes),
        fits=lambda t: len(tokenizer.encode(t, add_special_tokens=False)) <= DEFAULT_MAX_TOKENS,
        skipped=over,
    )
    return texts, over


def _measure_ceiling(result: dict[str, Any], texts: Sequence[str]) -> Baseline:
    """The matmul rates at the start, the models of the baselines, FLOPs per request and the ceilings."""
    result["matmul_gflops_start"] = {dt: matmul_gflops(dt) for dt in DTYPES}
    print(f"matmul GFLOP/s: {result['matmul_gflops_start']}", flush=True)
    base = Baseline()
    result["served_dtype"] = base.served_dtype
    result.update(base.flops(texts))
    set_ceiling(result, result["matmul_gflops_start"])
    rest = max(1, round(result["mean_uncached_tokens"]))
    shaped = {f"rows_{n}": base.shape_gflops(n) for n in (rest, 16 * rest)}
    result["model_shape_gflops"] = shaped
    result["ceiling_rps_uncached_model_shapes"] = max(shaped.values()) / result["gflop_per_request_uncached"]
    print(f"model-shaped matmul GFLOP/s: {shaped}", flush=True)
    return base


def _long_level(result: dict[str, Any], base: Baseline, size: str) -> Level:
    """The long level's (warm-up, timed) inputs, built from ``LONG_POOL``'s rows; their FLOPs go in the result."""
    from guardcal.data.loaders import load_dataset

    tok = base.naive.tokenizer
    n_long = LONG_CONCURRENCY + LONG_REQUESTS[size]
    rows = [e.text for e in load_dataset(LONG_POOL)]
    random.Random(0).shuffle(rows)
    made = long_inputs(rows, lambda t: len(tok(t, add_special_tokens=False)["input_ids"]), n_long)
    long_level = (made[:LONG_CONCURRENCY], made[LONG_CONCURRENCY:])
    result["levels"]["long"] = base.flops(long_level[1])
    print(f"long inputs: {json.dumps(result['levels']['long'])}", flush=True)
    return long_level


def _in_process(result: dict[str, Any], base: Baseline, levels: dict[int, Level]) -> list[float]:
    """The bare forward's times on the prompts timed at concurrency 1 (returned), and the scorer batched in process."""
    first = levels[min(levels)][1]
    served = base.served_times(levels[1][1] if 1 in levels else first)  # the prompts timed at concurrency 1
    batched = levels[16][1] if 16 in levels else first  # c16's texts
    result["in_process_batched_rps"] = in_process_batched_rps(base, batched)
    print(f"in process, 16 at a time: {result['in_process_batched_rps']:.2f} req/s", flush=True)
    return served


def _bench_backends(
    result: dict[str, Any], args: argparse.Namespace, levels: dict[int, Level], long_level: Level | None
) -> None:
    """Each backend of ``--backends`` served and driven at every level, or why it was skipped."""
    result["backends"], result["skipped"] = {}, {}
    with tempfile.TemporaryDirectory(prefix="guardcal-bench-") as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            python = args.vllm_python if backend == "vllm" else sys.executable
            why = backend_available(backend, python)
            if why is not None:
                result["skipped"][backend] = why
                print(f"skipping {backend}: {why}", flush=True)
                continue
            print(f"benchmarking {backend} ({python})", flush=True)
            try:
                result["backends"][backend] = bench_backend(backend, python, levels, Path(tmp), long_level)
            except RuntimeError as exc:
                result["skipped"][backend] = f"failed: {exc}"
                print(f"{backend} failed: {exc}", flush=True)


def _finish_baselines(
    result: dict[str, Any],
    base: Baseline,
    naive_texts: Sequence[str],
    before: list[float],
    after: list[float],
    served: list[float],
) -> None:
    """The matmul rates at the end, the ceilings from the faster measurement, and the naive and bare-forward rates."""
    result["matmul_gflops_end"] = {dt: matmul_gflops(dt) for dt in DTYPES}
    set_ceiling(result, result["matmul_gflops_start"], result["matmul_gflops_end"])
    naive_tokens = base.flops(naive_texts)["mean_prompt_tokens"]
    result.update(baseline_results(before, after, served, naive_tokens))
    # the naive forward's time grows about linearly with the prompt: its rate at the servers' mean length
    result["naive_rps_at_mean_length"] = result["naive_rps"] * naive_tokens / result["mean_prompt_tokens"]


def _write(result: dict[str, Any], output: Path) -> None:
    """The result as JSON at ``output``, with a PNG (when a backend ran) and Markdown beside it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    if result["backends"]:
        plot(result, output.with_suffix(".png"))
    output.with_suffix(".md").write_text(markdown(result))
    keys = ("naive_rps", "ceiling_rps_full_prompt", "ceiling_rps_uncached", "ratio_vs_naive", "fraction_of_ceiling")
    print(json.dumps({k: result.get(k) for k in keys}, indent=2))
    print(f"wrote {output} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
