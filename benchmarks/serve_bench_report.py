"""serve_bench's report (benchmarks/serve_bench.py): the ratios added to a finished run, and the run as
Markdown tables and as a plot of requests/s against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from .serve_bench_config import CONCURRENCY, LONG_CONCURRENCY, VARIANTS
except ImportError:  # run as a script: python benchmarks/NAME.py
    from serve_bench_config import CONCURRENCY, LONG_CONCURRENCY, VARIANTS  # type: ignore[no-redef]


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
        *_runs_table(result),
        "",
        *_baselines_table(result),
    ]
    if "best" in result:
        lines += _best_rows(result)
    return "\n".join(lines) + "\n"


def _runs_table(result: dict[str, Any]) -> list[str]:
    """One row per backend and level (req/s, latency, peak RSS, the level's length and share of the ceiling)."""
    lines = [
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
    return lines


def _baselines_table(result: dict[str, Any]) -> list[str]:
    """The naive loop, the matmul rates and ceilings, the in-process scorer and each backend's start-up."""
    g = result["matmul_gflops"]
    bf16 = f"{g['bfloat16']:.0f}" if result["machine"].get("native_bf16", True) else f"{g['bfloat16']:.2g} (emulated)"
    start, end = result.get("matmul_gflops_start"), result.get("matmul_gflops_end")
    span = f" ({start['float32']:.0f} at the start, {end['float32']:.0f} at the end)" if start and end else ""
    lines = [
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
    return lines


def _best_rows(result: dict[str, Any]) -> list[str]:
    """The best run and its ratios (to the naive loop, to the ceiling), the long inputs' cost and the p50 overhead."""
    b = result["best"]
    lines = [
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
    return lines


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
