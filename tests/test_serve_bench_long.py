"""The serving benchmark's long-input level (benchmarks/serve_bench.py) on hand-made results."""

import pytest

from benchmarks import serve_bench as sb


def test_long_inputs_join_fresh_rows_up_to_the_token_floor_under_the_character_limit():
    rows = [f"w{i} " * (i % 5 + 1) for i in range(200)]  # 1..5 "tokens" (words) each
    words = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer
    made = sb.long_inputs(rows, words, 4, min_tokens=12, max_chars=80)
    assert len(made) == 4
    assert all(words(t) >= 12 and len(t) <= 80 for t in made)
    used = [part.strip() for t in made for part in t.split("\n\n")]
    assert len(used) == len(set(used))  # every row at most once: no repeated prompt reaches a cache
    at = [[r.strip() for r in rows].index(u) for u in used]
    assert at == sorted(at)  # rows in order
    with pytest.raises(ValueError, match="could be built"):
        sb.long_inputs(rows[:5], words, 3, min_tokens=12)


def test_a_row_too_long_for_the_limit_is_skipped_not_cut():
    made = sb.long_inputs(["x " * 50, "a b c", "d e f"], lambda t: len(t.split()), 1, min_tokens=6, max_chars=40)
    assert made == ["a b c\n\nd e f"]


def test_levels_can_be_chosen():
    sizes = {1: 2, 16: 3}
    texts = [f"t{i}" for i in range(1 + 2 + 16 + 3)]
    levels = sb.level_inputs(texts, sizes)
    assert list(levels) == [1, 16] and [len(levels[c][1]) for c in levels] == [2, 3]
    assert sb.LEVELS == ("c1", "c4", "c16", "c64", "long")


def _result() -> dict:
    run = {"rps": 4.0, "p50_ms": 200.0, "p95_ms": 400.0, "p99_ms": 500.0}
    return {
        "size": "tiny",
        "machine": {"cores": 2, "torch": "2", "native_bf16": True, "loadavg_start": [0.5], "loadavg_end": [1]},
        "mean_prompt_tokens": 150.0,
        "prefix_tokens": 72,
        "matmul_gflops": {"float32": 100.0, "bfloat16": 100.0},
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
        "levels": {
            "c4": {"mean_prompt_tokens": 100.0, "gflop_per_request_full_prompt": 20.0, "mean_windows": 1.0},
            "long": {
                "mean_prompt_tokens": 3000.0,
                "gflop_per_request_full_prompt": 600.0,
                "mean_windows": 3.0,
                "mean_input_tokens": 2400.0,
            },
        },
        "backends": {
            "transformers": {
                "c4": dict(run),
                "long": dict(run, rps=0.1, p50_ms=30000.0, concurrency=4),
                "peak_rss_mb": 1000.0,
                "startup_s": 9.0,
            }
        },
        "skipped": {},
        "server_flags": [],
    }


def test_the_long_level_reports_its_cost_beside_the_short_inputs():
    result = _result()
    sb.summarise(result)
    res = result["backends"]["transformers"]
    assert result["best"]["concurrency"] == "c4"  # the long level never counts as the best short-input run
    assert res["c4"]["prompt_tokens_per_s"] == 400.0  # 4 req/s x 100 tokens
    assert res["long"]["prompt_tokens_per_s"] == pytest.approx(300.0)  # 0.1 req/s x 3,000 tokens (3 windows)
    assert res["long"]["tokens_per_s_vs_c4"] == pytest.approx(0.75)
    assert res["long"]["fraction_of_ceiling_at_level_length"] == pytest.approx(0.6)  # 0.1 x 600 / 100
    text = sb.markdown(result)
    assert "| transformers | 4, long inputs: 3.0 windows of 2400-token inputs | 0.10 | 30000 |" in text
    assert "| 3000 | 0.60 |" in text
    assert "long inputs, prompt tokens/s relative to short inputs at concurrency 4 | 0.75 |" in text


def test_flops_count_every_window(default_model):
    """A request's tokens and FLOPs are those of every window the server runs."""

    class Stub(sb.Baseline):
        def __init__(self, loaded):
            from guardcal.scoring.scorer import HFScorer

            self.naive = loaded
            self.scorer = HFScorer(loaded.model, loaded.tokenizer)

    base = Stub(default_model)
    short = base.flops(["hello there"])
    long_text = "The library opens at nine and closes at six on weekdays. " * 120
    long = base.flops([long_text])
    assert short["mean_windows"] == 1 and long["mean_windows"] == 2
    prompts = base.scorer.window_prompts([long_text])
    tok = default_model.tokenizer
    assert long["mean_prompt_tokens"] == sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    assert long["mean_input_tokens"] == len(tok(long_text, add_special_tokens=False)["input_ids"]) > 1024
