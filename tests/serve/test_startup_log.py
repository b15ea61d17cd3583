"""What the start-up log tells a newcomer: thresholds that certify nothing (a label never auto-decided), with
the share that will escalate, and where the API docs are."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guardcal.backends.base import fake_identity
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import Thresholds
from guardcal.serve.active import ActivePolicy, uncertified
from guardcal.serve.app import create_app

pytestmark = pytest.mark.anyio

# what risk_controlled_thresholds records when the predicted-unsafe group certifies nothing
DETAILS = {
    "n": 200,
    "groups": {"safe": {"n": 140, "met": True}, "unsafe": {"n": 60, "met": False}},
    "calibration": {"coverage": 0.315, "n_auto": 63, "n": 200},
}
FIT_SHARES = {"rows": "fit", "n": 300, "escalate": 0.7, "predicted": {"safe": 0.65, "unsafe": 0.35}}


def uncertified_bundle(tmp_path: Path, details: dict, extra: dict | None = None) -> Path:
    thresholds = Thresholds(0.86, 1.0, "risk_controlled", details, ("unsafe",))
    bundle = CalibrationBundle(
        method="platt",
        params={"prior_smoothing": True, "a_": 1.0, "b_": 0.0},
        thresholds=thresholds.to_dict(),
        extra=extra or {},
        **fake_identity(),
    )
    return bundle.save(tmp_path / "bundle.json")


@pytest.mark.parametrize(
    ("details", "extra", "says"),
    [
        (DETAILS, {"fit_escalation": FIT_SHARES}, "on the 300 fit rows 70.0% escalate (35.0% called unsafe)"),
        (DETAILS, None, "on the 200 threshold rows 68.5% escalate (30.0% called unsafe)"),
        ({}, None, "every input the model calls unsafe escalates and is never auto-decided; serve a bundle"),
    ],
)
def test_uncertified_label_is_named_with_the_share_the_bundle_records(tmp_path, make_settings, details, extra, says):
    path = uncertified_bundle(tmp_path, details, extra)
    policy = ActivePolicy.build(make_settings(bundle=str(path), escalate_below=None), CalibrationBundle.load(path))
    warning = uncertified(policy)
    assert warning is not None and "certify nothing for predicted-unsafe" in warning
    assert says in warning


def test_no_warning_when_every_label_is_decided_or_escalation_was_asked_for(tmp_path, make_settings, make_bundle):
    path = make_bundle(threshold=0.8)
    assert uncertified(ActivePolicy.build(make_settings(bundle=str(path), escalate_below=None),
                                          CalibrationBundle.load(path))) is None  # fmt: skip
    assert uncertified(ActivePolicy.build(make_settings(escalate_below=1.0), None)) is None  # on purpose
    # a fixed --escalate-below over an uncertified bundle: its thresholds decide, nothing to warn about
    uncertain = uncertified_bundle(tmp_path, DETAILS)
    assert uncertified(ActivePolicy.build(make_settings(bundle=str(uncertain), escalate_below=0.9),
                                          CalibrationBundle.load(uncertain))) is None  # fmt: skip


@pytest.mark.parametrize("dev", [False, True])
async def test_start_up_log_warns_and_says_where_the_docs_are(tmp_path, kit, make_settings, caplog, dev):
    path = uncertified_bundle(tmp_path, DETAILS, {"fit_escalation": FIT_SHARES})
    app = create_app(make_settings(bundle=str(path), escalate_below=None, dev=dev), kit.backend())
    with caplog.at_level(logging.INFO, logger="guardcal"):
        async with kit.running(app) as client:
            assert (await client.get("/docs")).status_code == (200 if dev else 404)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m for level, m in lines if level == logging.WARNING and "certify nothing for predicted-unsafe" in m]
    docs = [m for _, m in lines if m.startswith("API docs at /docs")]
    expected = "API docs at /docs and /openapi.json (--dev)" if dev else "API docs at /docs: start with --dev"
    assert docs == [expected]
