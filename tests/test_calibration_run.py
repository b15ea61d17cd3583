"""`guardcal calibrate` and `guardcal evaluate --bundle` on the real default model."""

import json

import pytest

from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.cli import main
from guardcal.errors import CalibrationError
from guardcal.evaluate import EvalConfig, metrics_from_rows, run_evaluation

EVAL = ["openai-moderation:test", "xstest"]


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, data_dir, default_model):
    out = tmp_path_factory.mktemp("cal")
    code = main(
        [
            "calibrate",
            "--method",
            "isotonic",
            "--output",
            str(out / "bundle.json"),
            "--report",
            str(out / "report"),
            "--data-dir",
            str(data_dir),
            "--limit",
            "48",
            "--max-input-tokens",
            "128",
            "--no-progress",
        ]
    )
    assert code == 0
    return out / "bundle.json"


def test_bundle_has_the_promised_shape(bundle_path):
    raw = json.loads(bundle_path.read_text())
    assert {
        "method",
        "params",
        "thresholds",
        "metrics",
        "label_spec",
        "prompt_fingerprint",
        "mode",
        "model_id",
        "adapter_hash",
        "guardcal_version",
        "created_at",
    } <= set(raw)
    assert raw["method"] == "isotonic" and raw["adapter_hash"] is None and raw["mode"] == "direct"
    for stage in ("before", "after"):
        assert list(raw["metrics"][stage]) == EVAL
        assert {"accuracy", "ece", "brier", "auroc"} <= set(raw["metrics"][stage]["xstest"])
    assert raw["thresholds"]["method"] == "risk_controlled"
    details = raw["thresholds"]["details"]
    assert details["target_error"] == {"safe": 0.05, "unsafe": 0.05} and details["delta"] == 0.1
    report = bundle_path.parent / "report"
    assert (report / "report.md").read_text().count("| before |") == 2
    assert (report / "reliability_xstest_after.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_with_bundle_reports_calibrated_metrics(bundle_path, tmp_path, data_dir):
    cfg = EvalConfig(
        datasets=["xstest"],
        output=tmp_path,
        limit=12,
        data_dir=str(data_dir),
        bundle=str(bundle_path),
        progress=False,
        max_input_tokens=128,
    )
    metrics = run_evaluation(cfg)
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    bundle = CalibrationBundle.load(bundle_path)
    for r in rows:
        assert r["calibrated_p_unsafe"] == pytest.approx(float(bundle.calibrator().predict([r["p_unsafe"]])[0]))
        assert r["calibrated_confidence"] == pytest.approx(max(r["calibrated_p_unsafe"], 1 - r["calibrated_p_unsafe"]))
        assert r["action"] in ("allow", "block", "escalate")
    assert metrics["xstest"] == pytest.approx(metrics_from_rows(rows, calibrated=True), nan_ok=True)
    assert metrics["xstest"] != pytest.approx(metrics_from_rows(rows), nan_ok=True)


def test_bundle_for_another_setting_is_refused(bundle_path, tmp_path, data_dir):
    cfg = EvalConfig(
        datasets=["xstest"],
        output=tmp_path,
        limit=2,
        data_dir=str(data_dir),
        bundle=str(bundle_path),
        reasoning=True,
        progress=False,
    )
    with pytest.raises(CalibrationError, match="prompt_fingerprint.*mode|mode.*prompt_fingerprint"):
        run_evaluation(cfg)
    raw = json.loads(bundle_path.read_text())
    raw["adapter_hash"] = "sha256:0000"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match="adapter_hash 'sha256:0000' but the server runs None"):
        run_evaluation(
            EvalConfig(
                datasets=["xstest"],
                output=tmp_path,
                limit=2,
                data_dir=str(data_dir),
                bundle=str(other),
                progress=False,
            )
        )


def test_calibrate_from_evaluate_predictions(tmp_path, data_dir, default_model):
    """Fitting from a `guardcal evaluate` folder gives the same identity and 'before' metrics."""
    ev = tmp_path / "eval"
    keys = ["openai-moderation:calib", *EVAL]
    metrics = run_evaluation(
        EvalConfig(datasets=keys, output=ev, limit=24, data_dir=str(data_dir), progress=False, max_input_tokens=128)
    )
    out = tmp_path / "b.json"
    assert main(["calibrate", "--method", "platt", "--predictions", str(ev), "--output", str(out)]) == 0
    bundle = CalibrationBundle.load(out)
    run = json.loads((ev / "run.json").read_text())
    assert (bundle.model_id, bundle.prompt_fingerprint, bundle.mode) == (
        run["model_id"],
        run["prompt_fingerprint"],
        run["mode"],
    )
    for key in EVAL:
        assert bundle.metrics["before"][key] == pytest.approx(metrics[key], nan_ok=True)
    assert bundle.extra["fit_n"] == 24


def test_predictions_folder_must_hold_the_fit_set(tmp_path, capsys):
    (tmp_path / "run.json").write_text(
        json.dumps(
            {"model_id": "m", "adapter_hash": None, "mode": "direct", "prompt_fingerprint": "p", "label_spec": {}}
        )
    )
    (tmp_path / "predictions.jsonl").write_text(
        json.dumps(
            {"dataset": "xstest", "id": "1", "label": "safe", "pred": "safe", "p_unsafe": 0.1, "confidence": 0.5}
        )
        + "\n"
    )
    assert main(["calibrate", "--predictions", str(tmp_path), "--output", str(tmp_path / "b.json")]) == 2
    assert "no predictions for ['openai-moderation:calib'" in capsys.readouterr().err


def test_shipped_default_bundle_matches_the_default_model(data_dir, default_model, tmp_path):
    """If the prompt, label tokens or default model change, the shipped bundle must be refitted."""
    from guardcal.evaluate import load_bundle, open_session
    from guardcal.models.shipped import shipped_setup

    setup = shipped_setup()  # the adapter and mode the bundle was fitted for (raises if the adapter is foreign)
    cfg = EvalConfig(datasets=["xstest"], output=tmp_path, adapter=setup.adapter, reasoning=setup.reasoning)
    session = open_session(cfg)
    bundle = load_bundle("default")
    session.check_bundle(bundle)  # raises naming the differing field
    assert bundle.mode == ("reasoning" if setup.reasoning else "direct")
    assert bundle.extra["dtype"] == "float32"  # what the server will run it in
    assert set(bundle.metrics["after"]) == set(EVAL)
