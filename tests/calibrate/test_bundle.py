"""Tests for the calibration bundle: JSON round trip, strict loading, compatibility checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guardcal import __version__
from guardcal.calibrate.base import make_calibrator
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import Thresholds, fixed_thresholds, risk_controlled_thresholds
from guardcal.core.labels import LabelSpec
from guardcal.errors import CalibrationError

SPEC = LabelSpec(labels=("safe", "unsafe"), surfaces=("Safe", "Unsafe"), token_ids=((22177, 25110), (1844, 1230)))
SETTING: dict[str, Any] = {
    "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "adapter_hash": "abc123",
    "prompt_fingerprint": "sha256:prompt-v1",
    "label_spec": SPEC.to_dict(),
    "mode": "direct",
}
OTHER: dict[str, Any] = {
    "model_id": "Qwen/Qwen3-1.7B",
    "adapter_hash": "def456",
    "prompt_fingerprint": "sha256:prompt-v2",
    "label_spec": {**SPEC.to_dict(), "token_ids": [[1], [2]]},
    "mode": "reasoning",
}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, size=3000)
    y = (rng.uniform(size=z.size) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return 1.0 / (1.0 + np.exp(-2.0 * z)), y


@pytest.fixture(params=["platt", "isotonic", "temperature"])
def bundle(request: pytest.FixtureRequest, data: tuple[np.ndarray, np.ndarray]) -> CalibrationBundle:
    scores, labels = data
    cal = make_calibrator(request.param).fit(scores, labels)
    thresholds = risk_controlled_thresholds(cal.predict(scores), labels, target_error=0.05, delta=0.1)
    metrics = {"before": {"xstest": {"n": 3000, "ece": 0.12, "auroc": None}}, "after": {"xstest": {"ece": 0.02}}}
    return CalibrationBundle.from_fitted(
        cal,
        thresholds,
        label_spec=SPEC,
        prompt_fingerprint=SETTING["prompt_fingerprint"],
        mode="direct",
        model_id=SETTING["model_id"],
        adapter_hash=SETTING["adapter_hash"],
        metrics=metrics,
        extra={"split": "openai-moderation:calib", "seed": 0},
    )


# ------------------------------------------------------------------ round trip


def test_save_load_round_trip(bundle: CalibrationBundle, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    path = bundle.save(tmp_path / "nested" / "bundle.json")
    assert path == tmp_path / "nested" / "bundle.json" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["bundle.json"]  # no temporary file left over
    loaded = CalibrationBundle.load(path)
    assert loaded == bundle
    scores = np.concatenate([data[0], [0.0, 1.0, 0.5]])
    assert np.array_equal(loaded.calibrator().predict(scores), bundle.calibrator().predict(scores))
    assert loaded.get_thresholds() == bundle.get_thresholds()
    assert isinstance(loaded.get_thresholds(), Thresholds)
    assert loaded.to_json() == path.read_text(encoding="utf-8")


def test_top_level_json_keys(bundle: CalibrationBundle) -> None:
    doc = json.loads(bundle.to_json())
    assert {"method", "params", "thresholds", "metrics"} <= set(doc)
    assert set(doc) == {
        "method",
        "params",
        "label_spec",
        "prompt_fingerprint",
        "mode",
        "model_id",
        "adapter_hash",
        "thresholds",
        "metrics",
        "guardcal_version",
        "created_at",
        "extra",
    }
    assert doc["method"] == bundle.method and doc["metrics"]["before"]["xstest"]["auroc"] is None
    assert doc["label_spec"] == SPEC.to_dict() and doc["guardcal_version"] == __version__


def test_created_at_is_iso_utc(bundle: CalibrationBundle) -> None:
    stamp = datetime.fromisoformat(bundle.created_at)
    assert stamp.utcoffset() == timedelta(0)


def test_calibrator_matches_the_fitted_one(data: tuple[np.ndarray, np.ndarray]) -> None:
    cal = make_calibrator("temperature").fit(*data)
    b = CalibrationBundle.from_fitted(
        cal, fixed_thresholds(0.9), label_spec=SPEC.to_dict(), prompt_fingerprint="p", mode="reasoning",
        model_id="m", adapter_hash=None,
    )  # fmt: skip
    assert b.method == "temperature" and b.params == cal.to_dict()["params"] and b.adapter_hash is None
    assert b.metrics == {"before": {}, "after": {}} and b.extra == {}
    assert np.array_equal(b.calibrator().predict(data[0]), cal.predict(data[0]))


def test_to_json_rejects_nan(bundle: CalibrationBundle) -> None:
    bundle.metrics["after"]["xstest"]["ece"] = float("nan")
    with pytest.raises(CalibrationError, match="not JSON-safe"):
        bundle.to_json()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("mode", "chat", "mode must be one of"),
        ("model_id", None, "'model_id' must be a string"),
        ("adapter_hash", 12, "'adapter_hash' must be a string or null"),
        ("params", [], "'params' must be a JSON object"),
    ],
)
def test_fields_are_validated(bundle: CalibrationBundle, field: str, value: object, match: str) -> None:
    doc = bundle.to_dict()
    doc[field] = value
    with pytest.raises(CalibrationError, match=match):
        CalibrationBundle(**doc)


# ------------------------------------------------------------------ strict loading


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bundle.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_rejects_non_json(tmp_path: Path) -> None:
    path = _write(tmp_path, "method: platt\n")
    with pytest.raises(CalibrationError, match="is not a JSON calibration bundle") as info:
        CalibrationBundle.load(path)
    assert str(path) in str(info.value)


def test_load_rejects_binary_and_pickle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "bundle.pkl"
    path.write_bytes(pickle.dumps({"method": "platt"}))
    with pytest.raises(CalibrationError, match="not a JSON calibration bundle"):
        CalibrationBundle.load(path)


def test_load_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="cannot read calibration bundle .*missing.json"):
        CalibrationBundle.load(tmp_path / "missing.json")


def test_load_rejects_json_that_is_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="must be a JSON object, got list"):
        CalibrationBundle.load(_write(tmp_path, "[1, 2]"))


@pytest.mark.parametrize("key", ["method", "params", "thresholds", "metrics", "label_spec", "adapter_hash"])
def test_load_names_a_missing_key_and_the_file(bundle: CalibrationBundle, tmp_path: Path, key: str) -> None:
    doc = bundle.to_dict()
    del doc[key]
    path = _write(tmp_path, json.dumps(doc))
    with pytest.raises(CalibrationError, match=f"missing key '{key}'") as info:
        CalibrationBundle.load(path)
    assert str(path) in str(info.value)


def test_load_tolerates_missing_extra(bundle: CalibrationBundle, tmp_path: Path) -> None:
    doc = bundle.to_dict()
    del doc["extra"]
    assert CalibrationBundle.load(_write(tmp_path, json.dumps(doc))).extra == {}


def test_load_rejects_unknown_keys(bundle: CalibrationBundle, tmp_path: Path) -> None:
    doc = {**bundle.to_dict(), "calibrator_pickle": "gASV"}
    with pytest.raises(CalibrationError, match=r"unknown bundle key\(s\) \['calibrator_pickle'\]"):
        CalibrationBundle.load(_write(tmp_path, json.dumps(doc)))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "histogram"}, "unknown calibration method 'histogram'"),
        ({"params": {}}, "missing"),
        ({"thresholds": {"safe": 0.9}}, r"thresholds dict is missing"),
        ({"thresholds": {"safe": 2.0, "unsafe": 0.9, "method": "fixed", "details": {}}}, r"in \[0.5, 1\]"),
        ({"mode": "chat"}, "mode must be one of"),
    ],
)
def test_load_validates_contents(bundle: CalibrationBundle, tmp_path: Path, change: dict, match: str) -> None:
    path = _write(tmp_path, json.dumps({**bundle.to_dict(), **change}))
    with pytest.raises(CalibrationError, match=match) as info:
        CalibrationBundle.load(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ compatibility


def test_check_compatible_passes_for_equal_fields(bundle: CalibrationBundle) -> None:
    bundle.check_compatible(**SETTING)
    bundle.check_compatible(**{**SETTING, "label_spec": SPEC})  # a LabelSpec object works too


def test_check_compatible_after_reload(bundle: CalibrationBundle, tmp_path: Path) -> None:
    CalibrationBundle.load(bundle.save(tmp_path / "b.json")).check_compatible(**{**SETTING, "label_spec": SPEC})


@pytest.mark.parametrize("field", ["model_id", "adapter_hash", "prompt_fingerprint", "label_spec", "mode"])
def test_check_compatible_names_the_differing_field(bundle: CalibrationBundle, field: str) -> None:
    with pytest.raises(CalibrationError) as info:
        bundle.check_compatible(**{**SETTING, field: OTHER[field]})
    message = str(info.value)
    assert f"bundle was fitted for {field} {SETTING[field]!r} but the server runs {OTHER[field]!r}" in message
    assert "re-run guardcal calibrate" in message
    others = set(SETTING) - {field}
    assert not any(f"fitted for {name} " in message for name in others)


def test_check_compatible_names_every_differing_field(bundle: CalibrationBundle) -> None:
    with pytest.raises(CalibrationError) as info:
        bundle.check_compatible(**OTHER)
    message = str(info.value)
    for field in SETTING:
        assert f"fitted for {field} {SETTING[field]!r} but the server runs {OTHER[field]!r}" in message


def test_check_compatible_adapter_none_differs_from_a_hash(bundle: CalibrationBundle) -> None:
    with pytest.raises(CalibrationError, match="adapter_hash 'abc123' but the server runs None"):
        bundle.check_compatible(**{**SETTING, "adapter_hash": None})
