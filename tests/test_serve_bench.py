"""The serving benchmark's bookkeeping (benchmarks/serve_bench.py) on hand-made results."""

from benchmarks import serve_bench as sb


def test_levels_take_fresh_texts_in_run_order():
    sizes = {1: 2, 4: 3, 16: 5, 64: 7}
    texts = [f"t{i}" for i in range(sum(sizes.values()) + sum(sb.CONCURRENCY))]
    levels = sb.level_inputs(texts, sizes)
    assert list(levels) == list(sb.CONCURRENCY)
    sent = [t for c in sb.CONCURRENCY for part in levels[c] for t in part]
    assert sent == texts  # every text once, warm-up before timed, level after level
    for c in sb.CONCURRENCY:
        warm_up, timed = levels[c]
        assert (len(warm_up), len(timed)) == (c, sizes[c])


def _result(native_bf16: bool = True) -> dict:
    run = {"rps": 4.0, "p50_ms": 200.0, "p95_ms": 400.0, "p99_ms": 500.0}
    return {
        "size": "quick",
        "machine": {"cores": 2, "torch": "2", "native_bf16": native_bf16, "loadavg_start": [0.5], "loadavg_end": [1]},
        "mean_prompt_tokens": 150.0,
        "prefix_tokens": 72,
        "matmul_gflops": {"float32": 100.0, "bfloat16": 0.27},
        "ceiling_gflops": 100.0,
        "gflop_per_request_full_prompt": 25.0,
        "gflop_per_request_uncached": 12.5,
        "ceiling_rps_full_prompt": 4.0,
        "ceiling_rps_uncached": 8.0,
        "naive_rps": 1.0,
        "naive_rps_at_mean_length": 1.0,
        "naive_rps_before_servers": 1.0,
        "naive_rps_after_servers": 1.0,
        "bare_forward_p50_ms": 100.0,
        "naive_forward_p50_ms": 400.0,
        # c16's inputs are short and c64's long: the same req/s is a smaller share at c16
        "levels": {
            "c16": {"mean_prompt_tokens": 100.0, "gflop_per_request_full_prompt": 20.0},
            "c64": {"mean_prompt_tokens": 200.0, "gflop_per_request_full_prompt": 40.0},
        },
        "backends": {
            "transformers": {"c16": dict(run), "c64": dict(run, rps=3.0), "peak_rss_mb": 1000.0, "startup_s": 9.0}
        },
        "skipped": {},
        "server_flags": [],
    }


def test_summary_weighs_each_level_by_its_own_inputs():
    result = _result()
    sb.summarise(result)
    res = result["backends"]["transformers"]
    assert result["best"] == {"backend": "transformers", "concurrency": "c16", "rps": 4.0}
    assert result["fraction_of_ceiling"] == 1.0  # the definition: the overall mean length
    assert res["c16"]["fraction_of_ceiling_at_level_length"] == 0.8  # 4 req/s x 20 GFLOP / 100 GFLOP/s
    assert res["c64"]["fraction_of_ceiling_at_level_length"] == 1.2  # 3 req/s x 40 GFLOP / 100 GFLOP/s


def test_markdown_shows_level_lengths_and_emulated_bf16():
    result = _result(native_bf16=False)
    sb.summarise(result)
    text = sb.markdown(result)
    assert "| transformers | 64 | 3.00 | 200 | 400 | 500 | 1000 | 200 | 1.20 |" in text
    assert "0.27 (emulated) GFLOP/s bf16" in text
    assert "0.27 (emulated)" not in sb.markdown(_result(native_bf16=True))


def test_ceiling_takes_the_faster_matmul_measurement():
    result = {"gflop_per_request_full_prompt": 20.0, "gflop_per_request_uncached": 10.0}
    start, end = {"float32": 80.0, "bfloat16": 0.3}, {"float32": 100.0, "bfloat16": 0.2}
    sb.set_ceiling(result, start, end)  # a busy neighbour slowed the first measurement
    assert result["matmul_gflops"] == {"float32": 100.0, "bfloat16": 0.3}
    assert (result["ceiling_rps_full_prompt"], result["ceiling_rps_uncached"]) == (5.0, 10.0)


def test_short_levels_draw_only_inputs_that_fit_one_window():
    """An over-budget input costs two or more whole windows (it was cut to one before windowing), so
    the short levels skip such inputs: the long level measures them. Order is kept otherwise."""
    every = sb.load_inputs(300)
    skipped: list[str] = []
    short = sb.load_inputs(40, fits=lambda t: len(t) <= 120, skipped=skipped)
    assert len(short) == 40 and all(len(t) <= 120 for t in short)
    assert skipped and all(len(t) > 120 for t in skipped)
    assert short == [t for t in every if len(t) <= 120][:40]  # the same draw, over-long ones left out
