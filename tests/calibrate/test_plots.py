"""Tests for guardcal.calibrate.plots."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from guardcal.calibrate.plots import plot_reliability, slug
from guardcal.errors import CalibrationError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sample(n: int = 2_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 1.5, size=n)
    correct = (rng.uniform(size=n) < conf - 0.1).astype(int)
    return conf, correct


def test_plot_reliability_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    conf, correct = _sample()
    target = tmp_path / "nested" / "dir" / "reliability.png"
    result = plot_reliability(conf, correct, target, title="base model / xstest")
    assert result == target
    assert isinstance(result, Path)
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def test_plot_reliability_accepts_str_path_and_tiny_input(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "tiny.png"
    result = plot_reliability([0.7, 0.7, 0.4], [1, 0, 1], str(target), title="tiny", n_bins=15)
    assert result == target
    assert target.read_bytes().startswith(PNG_MAGIC)


def test_plot_reliability_leaves_pyplot_alone(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    conf, correct = _sample(300, seed=1)
    before = None
    if "matplotlib.pyplot" in sys.modules:
        before = sys.modules["matplotlib.pyplot"].get_fignums()
    plot_reliability(conf, correct, tmp_path / "a.png", title="a")
    if before is not None:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == before


def test_plot_reliability_validates_inputs(tmp_path: Path) -> None:
    target = tmp_path / "bad.png"
    with pytest.raises(CalibrationError, match="confidence has 1 values outside"):
        plot_reliability([0.5, 1.5], [1, 0], target, title="bad")
    assert not target.exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai-moderation:test", "openai-moderation_test"),
        ("xstest", "xstest"),
        ("jsonl:/a/b.jsonl", "jsonl_a_b_jsonl"),
        ("jsonl:C:\\data\\my set.jsonl", "jsonl_C_data_my_set_jsonl"),
        ("hf:org/name@v1.2", "hf_org_name_v1_2"),
        ("../../etc/passwd", "etc_passwd"),
        ("::", "dataset"),
        ("", "dataset"),
    ],
)
def test_slug(name: str, expected: str) -> None:
    assert slug(name) == expected


def test_slug_is_a_safe_stem() -> None:
    for name in ("openai-moderation:test", "jsonl:/a/b.jsonl", "weird name*?<>|\"'", "ünïcödé:x"):
        stem = slug(name)
        assert stem
        assert all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in stem)
        assert Path(stem + ".png").name == stem + ".png"
