"""scripts/compare_candidates.py: the shipping rule (calib floor, then the highest mean of the two AUROCs),
with the calib reading from a training log or from a ``guardcal evaluate`` folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_candidates.py"
_spec = importlib.util.spec_from_file_location("compare_candidates", SCRIPT)
assert _spec is not None and _spec.loader is not None
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

VAL = [
    ("r0", "harmbench", "unsafe"),
    ("r1", "harmbench", "unsafe"),
    ("r2", "benign", "safe"),
    ("r3", "contrast-guardcal", "safe"),
]


def _val_eval(folder: Path, p_unsafe: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [
        {"id": i, "label": label, "p_unsafe": p, "pred": "unsafe" if p >= 0.5 else "safe"}
        for (i, _, label), p in zip(VAL, p_unsafe, strict=True)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _log(path: Path, aurocs: list[float]) -> Path:
    rows = [{"step": 1, "loss": 0.5}] + [
        {"step": 10 * (k + 1), "eval/accuracy": 0.8, "eval/auroc_unsafe": a, "eval/recall_safe": 0.9,
         "eval/recall_unsafe": 0.6}
        for k, a in enumerate(aurocs)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_floor_comes_before_the_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    val = tmp_path / "requests_val.jsonl"
    val.write_text("".join(json.dumps({"id": i, "source": s, "label": lab, "text": "x"}) + "\n" for i, s, lab in VAL))
    perfect, half = [0.9, 0.8, 0.2, 0.1], [0.9, 0.2, 0.8, 0.1]
    # a: its last evaluation (0.85) passes the floor, not its best one; b ranks requests perfectly but misses
    a = f"a={_log(tmp_path / 'a.jsonl', [0.9, 0.85])}:{_val_eval(tmp_path / 'a-val', half)}"
    b = f"b={_log(tmp_path / 'b.jsonl', [0.839])}:{_val_eval(tmp_path / 'b-val', perfect)}"
    calib_dir = tmp_path / "c-calib"
    calib_dir.mkdir()
    (calib_dir / "metrics.json").write_text(
        json.dumps({"openai-moderation:calib": {"accuracy": 0.7, "auroc_unsafe": 0.9}})
    )
    c = f"c={calib_dir}:{_val_eval(tmp_path / 'c-val', half)}"  # a soup: calib from an evaluate folder
    out = tmp_path / "compare.json"
    monkeypatch.setattr(sys, "argv", ["compare", "--val", str(val), "--run", a, "--run", b, "--run", c,
                                      "--output", str(out), "--plot", str(tmp_path / "t.png")])  # fmt: skip
    assert compare.main() == 0
    report = json.loads(out.read_text())
    rows = report["candidates"]
    assert rows["a"]["calib_auroc"] == 0.85 and rows["a"]["requests_val_auroc"] == 0.75
    assert rows["b"]["rule_mean"] > rows["c"]["rule_mean"] > rows["a"]["rule_mean"]
    assert not rows["b"]["calib_floor_met"] and rows["c"]["calib_floor_met"]
    assert report["chosen"] == "c"
    assert rows["c"]["accuracy_by_source"] == {"benign": 0.0, "contrast-guardcal": 1.0, "harmbench": 0.5}
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_a_log_without_evaluations_is_named(tmp_path: Path):
    with pytest.raises(SystemExit, match="no calibration evaluation"):
        compare.calib_reading(_log(tmp_path / "log.jsonl", []))
