"""The docs' result tables and README's first screen quote the committed result files; a rerun that changes
a number must change the page too (the tables are written by hand, so this is the check that they agree).

The replication and serving tables live in docs/results.md and docs/performance.md; README's first screen
quotes the shipped default guard (its bundle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PAGE = ROOT / "docs" / "results.md"
PERFORMANCE_PAGE = ROOT / "docs" / "performance.md"
#: the concurrency levels the serving tables quote
LEVELS = ("c1", "c4", "c16", "c64")


def method_rows() -> list[list[str]]:
    lines = (ROOT / "results" / "methods" / "methods.md").read_text().splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:] if line.startswith("|")]


@pytest.mark.parametrize("row", method_rows(), ids=lambda row: row[0])
def test_results_page_method_table_matches_results(row: list[str]) -> None:
    run, openai, xstest, table2 = row[:4]
    page = RESULTS_PAGE.read_text().splitlines()
    quoting = [line for line in page if line.startswith("|") and openai in line]
    source = "results/methods/methods.md"
    assert quoting, f"docs/results.md has no table row with {run}'s OpenAI test cell {openai!r} ({source})"
    assert any(xstest in line and table2 in line for line in quoting), (
        f"docs/results.md's row for {run} does not match {source}: expected {xstest!r} and {table2!r}"
    )


@pytest.mark.parametrize("name", ["serve_bench", "serve_bench-avx2", "serve_bench-avx2-packed"])
def test_performance_page_serving_rows_match_results(name: str) -> None:
    """Each backend's req/s at c1, c4, c16 and c64 in docs/performance.md's serving tables are the committed run's."""
    result = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
    best = (result["best"]["backend"], result["best"]["concurrency"])
    rows = [line for line in PERFORMANCE_PAGE.read_text().splitlines() if line.startswith("| ")]
    for backend, res in result["backends"].items():
        cells = [f"{res[c]['rps']:.2f}" for c in LEVELS]
        cells = [f"**{x}**" if (backend, c) == best else x for x, c in zip(cells, LEVELS, strict=True)]
        expected = "| " + " | ".join(cells) + " |"
        assert any(row.startswith(f"| {backend}") and expected in row for row in rows), (
            f"docs/performance.md has no {backend} row with {expected!r} ({name}.json)"
        )


def _first_screen(text: str) -> str:
    """Everything before the first second-level heading, whitespace-normalised."""
    return " ".join(text[: text.index("\n## ")].split())


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_first_screen_quotes_the_shipped_bundle(page: str) -> None:
    """The first screen's "what the default guard decides" numbers are the shipped bundle's: accuracy,
    the share it auto-decides (and, in domain, the share it escalates) and the error among its auto-decisions."""
    bundle = json.loads((ROOT / "guardcal" / "assets" / "default_bundle.json").read_text())
    first_screen = _first_screen((ROOT / page).read_text())
    after = bundle["metrics"]["after"]
    for key in ("openai-moderation:test", "xstest"):
        accuracy = f"{100 * after[key]['accuracy']:.1f}%"
        assert accuracy in first_screen, f"{page}'s first screen should quote {key} accuracy {accuracy}"
    escalation = bundle["extra"]["escalation"]
    coverage = {round(100 * e["coverage"], 1) for e in escalation.values()}
    if coverage == {0.0}:
        assert "every request escalates" in first_screen
        return
    for key, e in escalation.items():
        share, error = f"{100 * e['coverage']:.1f}%", f"{100 * e['error']:.1f}% error"
        assert share in first_screen, f"{page}'s first screen should quote {share} auto-decided ({key})"
        assert error in first_screen, f"{page}'s first screen should quote {error} among the auto-decided ({key})"
    in_domain = after["openai-moderation:test"]
    for quoted in (f"AUROC {in_domain['auroc_unsafe']:.3f}", f"ECE {100 * in_domain['ece']:.1f}%"):
        assert quoted in first_screen, f"{page}'s first screen should quote the in-domain {quoted}"


def test_readme_first_screen_quotes_the_escalation_rate() -> None:
    """README's one line on the escalation rate: the in-domain share escalated is 100% minus the share auto-decided."""
    bundle = json.loads((ROOT / "guardcal" / "assets" / "default_bundle.json").read_text())
    coverage = bundle["extra"]["escalation"]["openai-moderation:test"]["coverage"]
    escalated = f"escalates the other {100 - round(100 * coverage, 1):.1f}%"
    assert escalated in _first_screen((ROOT / "README.md").read_text()), f"README should say it {escalated}"


def test_performance_page_long_input_figures_are_the_committed_run() -> None:
    """docs/performance.md's long-input paragraph quotes serve_bench-avx2-long.json (the issue 20 measurement)."""
    result = json.loads((ROOT / "benchmarks" / "results" / "serve_bench-avx2-long.json").read_text())
    long = result["backends"]["transformers"]["long"]
    readme = " ".join(PERFORMANCE_PAGE.read_text().split())
    for quoted in (
        f"{long['tokens_per_s_vs_c4']:.2f}× the prompt tokens per second",
        f"p50 {long['p50_ms'] / 1000:.1f} s",
        f"at {long['rps']:.2f} req/s",
    ):
        assert quoted in readme, f"docs/performance.md should quote {quoted!r} from serve_bench-avx2-long.json"
    assert long["errors"] == 0 and long["n"] >= 16


def test_performance_page_short_input_comparison_is_the_committed_runs() -> None:
    """docs/performance.md's issue 20 paragraph quotes the interleaved old/windowed comparison and the back-to-back
    runs."""
    readme = " ".join(PERFORMANCE_PAGE.read_text().split())
    lock = json.loads((ROOT / "benchmarks" / "results" / "serve_lockstep-avx2.json").read_text())["server"]["levels"]
    quoted = ", ".join(f"{lock[c]['new_over_old']:.2f} ({c})" for c in ("c1", "c4", "c16"))
    assert quoted in readme, f"docs/performance.md should quote {quoted!r} from serve_lockstep-avx2.json"
    runs = {
        name: json.loads((ROOT / "benchmarks" / "results" / f"serve_bench-avx2-{name}.json").read_text())
        for name in ("prewindow-short", "short")
    }
    for c in ("c1", "c4", "c16"):
        old, new = (runs[n]["backends"]["transformers"][c]["rps"] for n in ("prewindow-short", "short"))
        assert f"{c} {old:.2f} / {new:.2f}" in readme, f"docs/performance.md should quote {c} {old:.2f} / {new:.2f}"
    assert runs["short"]["short_inputs_over_one_window_skipped"] >= 1
