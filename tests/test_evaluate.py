"""`guardcal evaluate` end to end on the real default model and real data."""

import json

import pytest

from guardcal.calibrate.metrics import METRIC_NAMES
from guardcal.cli import main
from guardcal.errors import ConfigError
from guardcal.evaluate import EvalConfig, metrics_from_rows, run_evaluation, subsample

DATASETS = ["xstest", "openai-moderation:test"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, data_dir, default_model):
    out = tmp_path_factory.mktemp("eval")
    cfg = EvalConfig(
        datasets=DATASETS, output=out, limit=16, data_dir=str(data_dir), progress=False, max_input_tokens=256
    )
    return out, run_evaluation(cfg)


def test_writes_every_output(evaluated):
    out, metrics = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert list(on_disk) == DATASETS
    for key in DATASETS:
        assert list(on_disk[key]) == list(METRIC_NAMES)
        assert on_disk[key]["n"] == 16
        png = out / f"reliability_{key.replace(':', '_')}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| xstest |" in report and "| openai-moderation:test |" in report
    run = json.loads((out / "run.json").read_text())
    assert run["prompt_fingerprint"].startswith("sha256:") and run["mode"] == "direct"


def test_metrics_agree_with_predictions(evaluated):
    out, metrics = evaluated
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 32
    for row in rows:
        assert {"dataset", "id", "label", "pred", "p_unsafe", "confidence"} <= set(row)
        assert row["label"] in ("safe", "unsafe") and row["pred"] in ("safe", "unsafe")
        assert row["pred"] == ("unsafe" if row["p_unsafe"] >= 0.5 else "safe")
    for key in DATASETS:
        recomputed = metrics_from_rows(r for r in rows if r["dataset"] == key)
        assert recomputed == pytest.approx(metrics[key], nan_ok=True)


def test_subsample_is_seeded_and_keeps_order(data_dir):
    from guardcal.data.loaders import load_dataset

    xs = load_dataset("xstest", data_dir)
    a, b = subsample(xs, 40), subsample(xs, 40)
    assert a == b and len(a) == 40
    idx = [xs.index(e) for e in a]
    assert idx == sorted(idx)
    assert {e.label for e in a} == {"safe", "unsafe"}


def test_config_errors():
    with pytest.raises(ConfigError, match="--dataset"):
        EvalConfig(datasets=[], output=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--limit"):
        EvalConfig(datasets=["xstest"], output=None, limit=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        EvalConfig(datasets=["xstest"], output=None, device="tpu")  # type: ignore[arg-type]


def test_auto_device_is_the_gpu_only_where_torch_sees_one(monkeypatch):
    import torch

    from guardcal.evaluate import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_cli_reports_bad_dataset_clearly(tmp_path, data_dir, capsys):
    code = main(["evaluate", "--dataset", "nope", "--output", str(tmp_path), "--data-dir", str(data_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "xstest" in err


def test_cli_evaluate_prints_metrics(tmp_path, data_dir, capsys, default_model):
    code = main(
        [
            "evaluate",
            "--dataset",
            "xstest",
            "--limit",
            "4",
            "--output",
            str(tmp_path / "o"),
            "--data-dir",
            str(data_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| xstest |" in printed and '"accuracy"' in printed
