"""scripts/grpo_comparison.py: a run's record comes from its own training log (the last evaluation,
every evaluation as a trajectory, the rollouts' reward and q > 0.99 share per step), the start is the
shipped default's LoRA alone, and the table and plot cover every run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "grpo_comparison.py"
_spec = importlib.util.spec_from_file_location("grpo_comparison", SCRIPT)
assert _spec is not None and _spec.loader is not None
cmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmp)


def _log(folder: Path, evals: dict[int, float]) -> Path:
    """A training log: a step line per step, an evaluation line at each step of ``evals`` (its ECE)."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, max(evals) + 1):
        lines.append({"step": step, "loss": 0.0, "reward": 0.5 + step / 100, "decision/q_gt_0.99": 1 / step})
        if step in evals:
            metrics = {"accuracy": 0.7 + step / 1000, "ece": evals[step], "brier": 0.2, "auroc_unsafe": 0.8}
            lines.append({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}, "eval/recall_safe": 0.9})
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_a_run_reads_as_its_last_evaluation_with_the_trajectory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    record = cmp.final_eval(_log(tmp_path / "run", {2: 0.2, 4: 0.1}))
    assert record["step"] == 4 and record["ece"] == 0.1 and record["accuracy"] == pytest.approx(0.704)
    assert record["recall_safe"] == 0.9 and record["recall_unsafe"] is None
    assert [(p["step"], p["ece"]) for p in record["trajectory"]] == [(2, 0.2), (4, 0.1)]
    assert record["train_reward"] == [0.51, 0.52, 0.53, 0.54]
    assert record["train_q_gt_0.99"] == [1.0, 0.5, 0.333, 0.25]


def test_the_start_is_the_default_lora_without_its_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from guardcal.assets import DEFAULT_ADAPTER

    folder = cmp.default_lora(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_config.json",
    ]
    assert (folder / "adapter_model.safetensors").read_bytes() == (
        DEFAULT_ADAPTER / "adapter_model.safetensors"
    ).read_bytes()
    assert json.loads((folder / "train_config.json").read_text())["method"] != "head"  # the LoRA's own training


def test_the_table_and_the_plot_cover_every_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runs = {
        f"{method} seed {seed}": cmp.final_eval(_log(tmp_path / f"{method}{seed}", {2: 0.2 - 0.05 * seed, 4: 0.1}))
        for method in cmp.METHODS
        for seed in (0, 1)
    }
    start = {"accuracy": 0.7, "ece": 0.25, "brier": 0.3, "auroc_unsafe": 0.8}
    table = cmp.table(start, runs)
    assert table.count("\n") == 2 + 1 + 4 and "| cal-grpo seed 1 | 0.704 | 0.100 |" in table
    cmp.plot(start, runs, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_also_scores_the_start_and_every_final_adapter_once_each(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def fake_score(adapter, out, dataset, window, budget):  # type: ignore[no-untyped-def]
        calls.append((adapter.name, out.name, dataset))
        return {"accuracy": 0.5 + len(calls) / 100, "ece": 0.1, "n": 450}

    monkeypatch.setattr(cmp, "score", fake_score)
    args = type("Args", (), {"workdir": tmp_path, "window": 128, "budget": 16})()
    folders = {"grpo seed 0": tmp_path / "grpo-seed0", "cal-grpo seed 0": tmp_path / "cal-grpo-seed0"}
    scored = cmp.score_also(tmp_path / "start-lora", folders, "xstest", args)
    assert calls == [
        ("start-lora", "start-xstest", "xstest"),
        ("grpo-seed0", "grpo-seed0-xstest", "xstest"),
        ("cal-grpo-seed0", "cal-grpo-seed0-xstest", "xstest"),
    ]
    assert list(scored) == ["start", "grpo seed 0", "cal-grpo seed 0"]
    assert scored["cal-grpo seed 0"]["accuracy"] == 0.53 and "n" not in scored["start"]
