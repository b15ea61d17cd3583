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
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

try:
    from .server_process import free_port, serve_command
except ImportError:  # run as a script: python benchmarks/NAME.py
    from server_process import free_port, serve_command  # type: ignore[no-redef]

CONCURRENCY = (1, 4, 16, 64)
#: the matmul rates measured for the ceiling
DTYPES = ("float32", "bfloat16")
#: requests timed at each concurrency (after a short warm-up that is not counted)
REQUESTS = {
    "tiny": {1: 2, 4: 4, 16: 16, 64: 64},
    "quick": {1: 8, 4: 16, 16: 32, 64: 64},
    "full": {1: 48, 4: 96, 16: 192, 64: 256},
}
#: naive requests timed before the servers, and the same ones again after them
NAIVE_REQUESTS = {"tiny": 2, "quick": 6, "full": 24}
#: the long-input level: requests timed (after LONG_CONCURRENCY warm-up ones), their concurrency and length
LONG_REQUESTS = {"tiny": 2, "quick": 4, "full": 16}
LONG_CONCURRENCY = 4
LONG_MIN_TOKENS = 2000  # three 1,024-token windows at the default 128-token overlap
LONG_POOL = "openai-moderation:train"  # rows no short level sends
MAX_INPUT_CHARS = 20_000  # the server's default max_input_chars
LEVELS = (*(f"c{c}" for c in CONCURRENCY), "long")
#: server flags on top of the defaults: let all concurrent requests reach the backend's batcher
SERVER_FLAGS = ["--max-concurrency", "64", "--queue-size", "256", "--request-timeout-s", "600"]
SERVER_FLAGS += ["--limit-concurrency", "300"]  # uvicorn's connection limit must sit above the queue
#: what ``--backends`` can name: a backend, or the transformers backend with its forward torch.compile'd
VARIANTS = {
    "transformers": ["--backend", "transformers"],
    "transformers-compile": ["--backend", "transformers", "--compile"],
    "vllm": ["--backend", "vllm"],
}


# ---------------------------------------------------------------- inputs and machine


def level_inputs(texts: Sequence[str], sizes: dict[int, int]) -> dict[int, tuple[list[str], list[str]]]:
    """Each concurrency's (warm-up, timed) texts, in run order: no text is sent twice, so no cache
    anywhere sees a repeated prompt. The levels get different texts, hence different lengths:
    ``levels.c<N>`` in the result records each level's own FLOPs per request."""
    fresh = iter(texts)
    chosen = [c for c in CONCURRENCY if c in sizes]
    return {c: ([next(fresh) for _ in range(c)], [next(fresh) for _ in range(sizes[c])]) for c in chosen}


def long_inputs(
    rows: Sequence[str], count_tokens: Any, n: int, min_tokens: int = LONG_MIN_TOKENS, max_chars: int = MAX_INPUT_CHARS
) -> list[str]:
    """``n`` long inputs: consecutive ``rows`` joined by blank lines until one holds ``min_tokens`` tokens
    (``count_tokens(text)``); a row that would pass ``max_chars`` is skipped. Each row is used once."""
    out: list[str] = []
    fresh = iter(rows)
    while len(out) < n:
        text = ""
        while count_tokens(text) < min_tokens:
            row = next(fresh, None)
            if row is None:
                raise ValueError(
                    f"only {len(out)} long inputs of {min_tokens} tokens could be built; {n} were asked for"
                )
            joined = f"{text}\n\n{row}" if text else row
            if len(joined) <= max_chars:
                text = joined
        out.append(text)
    return out


def load_inputs(n: int, seed: int = 0, fits: Any = None, skipped: list[str] | None = None) -> list[str]:
    """``n`` texts alternating between XSTest and the OpenAI Moderation test split (seeded).

    With ``fits`` (``fits(text) -> bool``) only texts it accepts are drawn, in the same order; the
    others go to ``skipped``. The short levels pass "fits in one scoring window": an input over the
    1,024-token budget costs two or more whole windows (``core.windows``; before windowing it was cut
    to one), so one such input in a level measures the long-input path, which the ``long`` level
    measures on its own. Each such input is several short inputs' work (15 of the 880 OpenAI
    Moderation test rows; c4 and c16 drew one each, which made them 14% and 6% more prompt tokens).
    """
    from guardcal.data.loaders import load_dataset

    rng = random.Random(seed)
    pools = [load_dataset("xstest"), load_dataset("openai-moderation:test")]
    for pool in pools:
        rng.shuffle(pool)
    out: list[str] = []
    limit = 2 * (n + sum(len(pool) for pool in pools))
    for i in range(limit):
        if len(out) == n:
            break
        text = pools[i % 2][(i // 2) % len(pools[i % 2])].text
        if fits is None or fits(text):
            out.append(text)
        elif skipped is not None:
            skipped.append(text)
    if len(out) < n:
        raise ValueError(f"only {len(out)} inputs fit; {n} were asked for")
    return out


def machine_info() -> dict[str, Any]:
    import torch

    from guardcal.backends.precision import cpu_supports_bf16

    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def matmul_gflops(dtype: str, n: int = 2048, seconds: float = 2.0) -> float:
    """Best-of GFLOP/s of an n x n x n matmul in ``dtype`` with torch's current thread count."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    return 2 * n**3 / best_time(lambda: a @ b, seconds) / 1e9


def set_ceiling(result: dict[str, Any], *measured: dict[str, float]) -> None:
    """The compute ceiling from the best matmul rate measured (a neighbour on a shared machine can
    only slow a measurement down, so the fastest one is the machine's capability)."""
    gflops = {dt: max(m[dt] for m in measured) for dt in DTYPES}
    result["matmul_gflops"] = gflops
    result["ceiling_gflops"] = peak = max(gflops.values())
    result["ceiling_rps_full_prompt"] = peak / result["gflop_per_request_full_prompt"]
    result["ceiling_rps_uncached"] = peak / result["gflop_per_request_uncached"]


def best_time(fn: Any, seconds: float) -> float:
    """The fastest of repeated ``fn()`` calls within ``seconds``, after one warm-up call (kernel selection)."""
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------- naive baseline and FLOPs


class Baseline:
    """The naive loop (float32, full prompt) and a bare in-process forward in the server's configuration."""

    def __init__(self) -> None:
        from guardcal.backends.precision import resolve_dtype
        from guardcal.models.loading import load_model
        from guardcal.scoring.scorer import HFScorer

        self.naive = load_model("default", dtype="float32")
        self.scorer = HFScorer(self.naive.model, self.naive.tokenizer)  # renders prompts exactly like the server
        self.served_dtype = resolve_dtype("auto")
        served = load_model("default", dtype=self.served_dtype)
        # reference reads in batches of 16 (the server's forward_batch is 32): batching moves scores by float noise
        self.served = HFScorer(served.model, served.tokenizer, prefix_cache=True, batch_size=16)

    def flops(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokens and FLOPs per request: 2 x matmul parameters x tokens, plus the LM head at one position
        per window. A request's tokens are those of every window's prompt the server runs (one window
        for an input within the 1,024-token budget)."""
        from guardcal.scoring.prefix_cache import prefix_token_ids

        model, tok = self.naive.model, self.naive.tokenizer
        windows = [
            [len(tok(p, add_special_tokens=False)["input_ids"]) for p in self.scorer.window_prompts([t])]
            for t in texts
        ]
        prefix = len(prefix_token_ids(tok, self.scorer.template))
        total = sum(p.numel() for p in model.parameters())
        matmul = total - model.get_input_embeddings().weight.numel()  # a lookup; the tied head runs once a window
        head = 2 * model.config.hidden_size * model.config.vocab_size
        full = statistics.fmean(sum(w) for w in windows)
        rest = statistics.fmean(sum(n - prefix for n in w) for w in windows)
        count = statistics.fmean(len(w) for w in windows)
        return {
            "params_total": total,
            "params_matmul": matmul,
            "mean_prompt_tokens": full,
            "prefix_tokens": prefix,
            "mean_uncached_tokens": rest,
            "mean_windows": count,
            "mean_input_tokens": statistics.fmean(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts),
            "gflop_per_request_full_prompt": (2 * matmul * full + head * count) / 1e9,
            "gflop_per_request_uncached": (2 * matmul * rest + head * count) / 1e9,
        }

    def shape_gflops(self, rows: int, seconds: float = 1.0) -> float:
        """GFLOP/s of the served model's own matmuls (every Linear's shape, in its dtype) on ``rows`` rows.

        The 2048^3 matmul rate overstates what a 576-wide model gets: its matrices are thin, so
        the same FLOPs run slower. Summing the time of each Linear at ``rows`` rows gives the
        rate the model's matmuls can actually reach (still ignoring attention and the rest).
        """
        import torch

        shapes: dict[tuple[int, int], int] = {}
        for module in self.served.model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features < 10_000:  # the LM head runs once
                key = (module.in_features, module.out_features)
                shapes[key] = shapes.get(key, 0) + 1
        dtype = next(self.served.model.parameters()).dtype
        flops = seconds_total = 0.0
        with torch.inference_mode():
            for (d_in, d_out), count in shapes.items():
                x, w = torch.randn(rows, d_in, dtype=dtype), torch.randn(d_out, d_in, dtype=dtype)
                best = best_time(lambda x=x, w=w: torch.nn.functional.linear(x, w), seconds / len(shapes))
                flops += count * 2 * rows * d_in * d_out
                seconds_total += count * best
        return flops / seconds_total / 1e9

    def naive_times(self, texts: Sequence[str]) -> list[float]:
        """What a user writes first: one request at a time, the whole prompt, softmax at the last position."""
        import torch

        model, tok = self.naive.model, self.naive.tokenizer
        label_ids = list(self.scorer.spec.all_ids)
        times = []
        with torch.inference_mode():
            for prompt in self.scorer.prompts([texts[0], *texts]):  # the first is a warm-up
                t = time.perf_counter()
                logits = model(**tok(prompt, return_tensors="pt", add_special_tokens=False)).logits
                float(torch.softmax(logits[0, -1], dim=-1)[label_ids].sum())
                times.append(time.perf_counter() - t)
        return times[1:]

    def served_times(self, texts: Sequence[str]) -> list[float]:
        """One bare forward per text, in process, as the server runs it (its dtype, the cached prefix)."""
        times = []
        for text in [texts[0], *texts]:
            t = time.perf_counter()
            self.served.score([text])
            times.append(time.perf_counter() - t)
        return times[1:]


def in_process_batched_rps(base: Baseline, texts: Sequence[str], group: int = 16) -> float:
    """The server's scorer fed ``group`` texts at a time in process: concurrency 16 without HTTP."""
    base.served.score(texts[:group])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), group):
        base.served.score(texts[i : i + group])
    return len(texts) / (time.perf_counter() - started)


def baseline_results(before: list[float], after: list[float], served: list[float], tokens: float) -> dict[str, Any]:
    """``tokens``: mean prompt length of the naive inputs (a few, so it can differ from the servers' mix)."""
    naive = before + after
    return {
        "naive_rps": len(naive) / sum(naive),
        "naive_mean_prompt_tokens": tokens,
        "naive_n": len(naive),
        "naive_rps_before_servers": len(before) / sum(before),
        "naive_rps_after_servers": len(after) / sum(after) if after else None,
        "naive_forward_p50_ms": 1000 * statistics.median(naive),
        "bare_forward_p50_ms": 1000 * statistics.median(served),
    }


# ---------------------------------------------------------------- the server


def backend_available(backend: str, python: str) -> str | None:
    """None when ``python`` can run ``backend`` (a VARIANTS name); otherwise why not."""
    if backend not in VARIANTS:
        return f"unknown backend {backend!r}; use one of {sorted(VARIANTS)}"
    if backend == "transformers-compile":
        from guardcal.backends.compiled import cxx_compiler

        return None if cxx_compiler() else "no C++ compiler for torch.compile (apt-get install g++)"
    if backend == "transformers":
        return None
    code = "import vllm, guardcal.backends.vllm_backend"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot run: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error text"])[-1]
        return f"`{code}` failed in {python}: {last}"
    return None


class Server:
    """``guardcal serve`` as a child process, its output in a file, its peak RSS sampled."""

    def __init__(self, python: str, backend: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{backend}.log"
        # the base model in direct mode with a fixed threshold: the shipped bundle would bring its adapter and mode
        outbox = str(workdir / f"outbox-{backend}.sqlite3")
        flags = [*VARIANTS[backend], "--port", str(self.port), "--bundle", "none", "--escalate-below", "0.9"]
        cmd = serve_command(*flags, "--outbox", outbox, *SERVER_FLAGS, python=python)
        self.cmd = cmd
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        self._log = self.log_path.open("w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                rss = 0
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(0.2)

    def wait_ready(self, timeout_s: float) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        return httpx.get(self.base + "/metrics", timeout=30).text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stop.set()
        self._sampler.join()
        self._log.close()


async def drive(base: str, texts: Sequence[str], concurrency: int) -> dict[str, Any]:
    """POST each text once with ``concurrency`` requests in flight; throughput and latency."""
    latencies: list[float] = []
    errors: list[str] = []
    queue: Iterator[str] = iter(texts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def worker() -> None:
            for text in queue:
                t = time.perf_counter()
                r = await client.post("/classify", json={"input": text})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or r.json().get("action") not in ("allow", "block", "escalate"):
                    errors.append(f"HTTP {r.status_code}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    return {
        "n": len(ms),
        "rps": len(ms) / wall,
        "p50_ms": _pct(ms, 50),
        "p95_ms": _pct(ms, 95),
        "p99_ms": _pct(ms, 99),
        "errors": len(errors),
    }


def _pct(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, min(len(sorted_ms), round(q / 100 * len(sorted_ms) + 0.5)))
    return float(sorted_ms[rank - 1])


def bench_backend(
    backend: str,
    python: str,
    levels: dict[int, tuple[list[str], list[str]]],
    workdir: Path,
    long_level: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    server = Server(python, backend, workdir)
    try:
        startup = server.wait_ready(900)
        out: dict[str, Any] = {"startup_s": startup, "command": " ".join(server.cmd[1:])}
        for c, (warm_up, timed) in levels.items():
            asyncio.run(drive(server.base, warm_up, c))  # not counted
            out[f"c{c}"] = asyncio.run(drive(server.base, timed, c))
            print(f"  {backend} c{c}: {json.dumps(out[f'c{c}'])}", flush=True)
        if long_level is not None:  # long inputs, scored whole as windows
            warm_up, timed = long_level
            asyncio.run(drive(server.base, warm_up, LONG_CONCURRENCY))  # not counted
            out["long"] = {"concurrency": LONG_CONCURRENCY, **asyncio.run(drive(server.base, timed, LONG_CONCURRENCY))}
            print(f"  {backend} long: {json.dumps(out['long'])}", flush=True)
        text = server.metrics()
        out["backend_errors"] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("guardcal_backend_errors_total")
        )
        log = server.log_path.read_text(errors="replace").splitlines()
        out["server_log_summary"] = [x for x in log if "backend:" in x or "guardcal serving" in x]
    finally:
        server.stop()
    out["peak_rss_mb"] = server.peak_rss / 2**20
    return out


# ---------------------------------------------------------------- report


def summarise(result: dict[str, Any]) -> None:
    """Add the ratios the issue asks for."""
    runs = {
        (name, key): res[key]["rps"]
        for name, res in result["backends"].items()
        for key in res
        if key.startswith("c") and isinstance(res[key], dict)
    }
    if not runs:
        return
    (best_name, best_key), best = max(runs.items(), key=lambda kv: kv[1])
    result["best"] = {"backend": best_name, "concurrency": best_key, "rps": best}
    result["ratio_vs_naive"] = best / result["naive_rps"]
    result["ratio_vs_naive_length_adjusted"] = best / result["naive_rps_at_mean_length"]
    result["fraction_of_ceiling"] = best / result["ceiling_rps_full_prompt"]
    result["fraction_of_uncached_ceiling"] = best / result["ceiling_rps_uncached"]
    c16 = max((v for (_, k), v in runs.items() if k == "c16"), default=None)
    if c16 is not None:
        result["ratio_vs_naive_c16"] = c16 / result["naive_rps"]
    peak = result["ceiling_gflops"]
    for res in result["backends"].values():
        for key, level in result.get("levels", {}).items():
            if isinstance(res.get(key), dict):  # the same share, at the lengths this level's inputs have
                res[key]["fraction_of_ceiling_at_level_length"] = (
                    res[key]["rps"] * level["gflop_per_request_full_prompt"] / peak
                )
                res[key]["prompt_tokens_per_s"] = res[key]["rps"] * level["mean_prompt_tokens"]
        short = res.get(f"c{LONG_CONCURRENCY}")
        if isinstance(res.get("long"), dict) and isinstance(short, dict) and "prompt_tokens_per_s" in short:
            # the cost of long inputs: their windows' tokens per second beside short inputs' at the same concurrency
            res["long"]["tokens_per_s_vs_c4"] = res["long"]["prompt_tokens_per_s"] / short["prompt_tokens_per_s"]
        if "c1" in res:
            res["p50_c1_over_bare_forward"] = res["c1"]["p50_ms"] / result["bare_forward_p50_ms"]
            res["p50_c1_over_naive_forward"] = res["c1"]["p50_ms"] / result["naive_forward_p50_ms"]


def markdown(result: dict[str, Any]) -> str:
    """The run as Markdown tables (for the README)."""
    m = result["machine"]
    lines = [
        f"{result['size']} run, {m['cores']} cores, torch {m['torch']}, load average {m['loadavg_start'][0]:.1f} at "
        f"start / {m['loadavg_end'][0]:.1f} at end, {result['mean_prompt_tokens']:.0f} prompt tokens per request "
        f"({result['prefix_tokens']} of them the shared prefix)",
        "",
        "| backend | concurrency | req/s | p50 ms | p95 ms | p99 ms | peak RSS MB "
        "| prompt tokens (these inputs) | share of full-prompt ceiling at these inputs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    levels = result.get("levels", {})
    for name, res in result["backends"].items():
        for c in CONCURRENCY:
            r = res.get(f"c{c}")
            if r:
                tokens = levels.get(f"c{c}", {}).get("mean_prompt_tokens")
                share = r.get("fraction_of_ceiling_at_level_length")
                lines.append(
                    f"| {name} | {c} | {r['rps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
                    f"| {res['peak_rss_mb']:.0f} | {_num(tokens, '.0f')} | {_num(share, '.2f')} |"
                )
        r = res.get("long")
        if r:
            level = levels.get("long", {})
            what = f"{r['concurrency']}, long inputs: {_num(level.get('mean_windows'), '.1f')} windows of"
            what += f" {_num(level.get('mean_input_tokens'), '.0f')}-token inputs"
            lines.append(
                f"| {name} | {what} | {r['rps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
                f"| {res['peak_rss_mb']:.0f} | {_num(level.get('mean_prompt_tokens'), '.0f')} "
                f"| {_num(r.get('fraction_of_ceiling_at_level_length'), '.2f')} |"
            )
    for name, why in result["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    g = result["matmul_gflops"]
    bf16 = f"{g['bfloat16']:.0f}" if result["machine"].get("native_bf16", True) else f"{g['bfloat16']:.2g} (emulated)"
    start, end = result.get("matmul_gflops_start"), result.get("matmul_gflops_end")
    span = f" ({start['float32']:.0f} at the start, {end['float32']:.0f} at the end)" if start and end else ""
    lines += [
        "",
        "| | value |",
        "|---|---|",
        f"| naive loop (fp32, full prompt, one at a time) | {result['naive_rps']:.2f} req/s "
        f"({result['naive_rps_before_servers']:.2f} before the servers, "
        f"{result['naive_rps_after_servers']:.2f} after); "
        f"{result['naive_rps_at_mean_length']:.2f} at the servers' mean length |",
        f"| matmul throughput (the faster of the start and the end) | {bf16} GFLOP/s bf16, "
        f"{g['float32']:.0f} GFLOP/s fp32{span} |",
        f"| ceiling, full prompt ({result['gflop_per_request_full_prompt']:.1f} GFLOP/request) "
        f"| {result['ceiling_rps_full_prompt']:.2f} req/s |",
        f"| ceiling, uncached part ({result['gflop_per_request_uncached']:.1f} GFLOP/request) "
        f"| {result['ceiling_rps_uncached']:.2f} req/s |",
    ]
    if "in_process_batched_rps" in result:
        lines.append(
            f"| the server's scorer in process, 16 texts at a time (no HTTP) "
            f"| {result['in_process_batched_rps']:.2f} req/s |"
        )
    if "model_shape_gflops" in result:
        shaped = ", ".join(
            f"{v:.0f} at {k.removeprefix('rows_')} rows" for k, v in result["model_shape_gflops"].items()
        )
        lines.append(
            f"| the model's own matmul shapes ({result['served_dtype']}): {shaped} GFLOP/s; uncached-part ceiling "
            f"at that rate | {result['ceiling_rps_uncached_model_shapes']:.2f} req/s |"
        )
    for name, res in result["backends"].items():
        lines.append(f"| {name}: start-up to /readyz (model load, warm-up, compile) | {res['startup_s']:.0f} s |")
    if "best" in result:
        b = result["best"]
        lines += [
            f"| best | {b['backend']} at {b['concurrency']}: {b['rps']:.2f} req/s |",
            f"| ratio_vs_naive (length-adjusted) | {result['ratio_vs_naive']:.1f}x "
            f"({result['ratio_vs_naive_length_adjusted']:.1f}x) |",
            f"| fraction_of_ceiling (full prompt / uncached part) | {result['fraction_of_ceiling']:.2f} / "
            f"{result['fraction_of_uncached_ceiling']:.2f} |",
        ]
        for name, res in result["backends"].items():
            if "tokens_per_s_vs_c4" in res.get("long", {}):
                lines.append(
                    f"| {name}: long inputs, prompt tokens/s relative to short inputs at concurrency "
                    f"{LONG_CONCURRENCY} | {res['long']['tokens_per_s_vs_c4']:.2f} |"
                )
        for name, res in result["backends"].items():
            if "p50_c1_over_bare_forward" in res:
                lines.append(
                    f"| {name}: p50 at concurrency 1 / bare forward ({result['bare_forward_p50_ms']:.0f} ms) "
                    f"| {res['p50_c1_over_bare_forward']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, res in result["backends"].items():
        xs = [c for c in CONCURRENCY if f"c{c}" in res]
        flags = " ".join(VARIANTS.get(name, ["--backend", name]))
        ax.plot(xs, [res[f"c{c}"]["rps"] for c in xs], marker="o", label=f"guardcal serve {flags}")
    ax.axhline(result["ceiling_rps_full_prompt"], color="k", ls="--", lw=1, label="compute ceiling, full prompt")
    ax.axhline(result["ceiling_rps_uncached"], color="k", ls=":", lw=1, label="compute ceiling, uncached part")
    if "ceiling_rps_uncached_model_shapes" in result:
        ax.axhline(
            result["ceiling_rps_uncached_model_shapes"],
            color="tab:gray",
            ls=":",
            lw=1,
            label="uncached part at the model's matmul shapes",
        )
    ax.axhline(result["naive_rps"], color="tab:red", ls="-.", lw=1, label="naive loop (fp32, full prompt)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("requests / s")
    m = result["machine"]
    ax.set_title(f"POST /classify, default model, {m['cores']} cores, load {m['loadavg_start'][0]:.1f} at start")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
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
    sizes = {c: n for c, n in REQUESTS[size].items() if f"c{c}" in chosen}
    began = time.perf_counter()
    from guardcal.core.windows import DEFAULT_MAX_TOKENS
    from guardcal.models.loading import load_tokenizer

    tokenizer = load_tokenizer("default")
    over: list[str] = []
    texts = load_inputs(  # short levels: inputs that fit one window (the long level sends the others)
        sum(sizes.values()) + sum(sizes),
        fits=lambda t: len(tokenizer.encode(t, add_special_tokens=False)) <= DEFAULT_MAX_TOKENS,
        skipped=over,
    )
    result: dict[str, Any] = {"size": size, "machine": machine_info(), "server_flags": SERVER_FLAGS}
    result["short_inputs_over_one_window_skipped"] = len(over)
    print(f"machine: {json.dumps(result['machine'])}", flush=True)

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
    n_naive = NAIVE_REQUESTS[size]
    naive_texts = texts[:n_naive]  # the first inputs the servers get too
    before = base.naive_times(naive_texts)
    print(f"naive {len(before) / sum(before):.2f} req/s; ceiling {result['ceiling_rps_full_prompt']:.2f} req/s")
    levels = level_inputs(texts, sizes)
    result["levels"] = {f"c{c}": base.flops(timed) for c, (_, timed) in levels.items()}
    long_level = None
    if "long" in chosen:
        from guardcal.data.loaders import load_dataset

        tok = base.naive.tokenizer
        n_long = LONG_CONCURRENCY + LONG_REQUESTS[size]
        rows = [e.text for e in load_dataset(LONG_POOL)]
        random.Random(0).shuffle(rows)
        made = long_inputs(rows, lambda t: len(tok(t, add_special_tokens=False)["input_ids"]), n_long)
        long_level = (made[:LONG_CONCURRENCY], made[LONG_CONCURRENCY:])
        result["levels"]["long"] = base.flops(long_level[1])
        print(f"long inputs: {json.dumps(result['levels']['long'])}", flush=True)
    first = levels[min(levels)][1]
    served = base.served_times(levels[1][1] if 1 in levels else first)  # the prompts timed at concurrency 1
    batched = levels[16][1] if 16 in levels else first  # c16's texts
    result["in_process_batched_rps"] = in_process_batched_rps(base, batched)
    print(f"in process, 16 at a time: {result['in_process_batched_rps']:.2f} req/s", flush=True)

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
    after = base.naive_times(naive_texts)  # the same inputs again after the servers: the gap is drift
    result["matmul_gflops_end"] = {dt: matmul_gflops(dt) for dt in DTYPES}
    set_ceiling(result, result["matmul_gflops_start"], result["matmul_gflops_end"])
    naive_tokens = base.flops(naive_texts)["mean_prompt_tokens"]
    result.update(baseline_results(before, after, served, naive_tokens))
    # the naive forward's time grows about linearly with the prompt: its rate at the servers' mean length
    result["naive_rps_at_mean_length"] = result["naive_rps"] * naive_tokens / result["mean_prompt_tokens"]
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - began
    summarise(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if result["backends"]:
        plot(result, args.output.with_suffix(".png"))
    args.output.with_suffix(".md").write_text(markdown(result))
    keys = ("naive_rps", "ceiling_rps_full_prompt", "ceiling_rps_uncached", "ratio_vs_naive", "fraction_of_ceiling")
    print(json.dumps({k: result.get(k) for k in keys}, indent=2))
    print(f"wrote {args.output} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
