"""serve_bench's baselines (benchmarks/serve_bench.py): the machine's compute ceiling (matmul rates,
FLOPs per request), the naive transformers loop, the bare in-process forward in the server's
configuration and the server's scorer batched in process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

try:
    from .serve_bench_config import DTYPES
except ImportError:  # run as a script: python benchmarks/NAME.py
    from serve_bench_config import DTYPES  # type: ignore[no-redef]


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
