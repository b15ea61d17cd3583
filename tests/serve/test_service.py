"""GuardService without HTTP: calibration, bundle checks, fail-closed paths, shadow mode, outbox, audit log."""

from __future__ import annotations

import logging

import pytest

from guardcal.backends.base import FakeBackend
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.serve.errors import NotReadyError, StartupError
from guardcal.serve.metrics import ServeMetrics
from guardcal.serve.service import WARM_UP_TEXT, GuardService

pytestmark = pytest.mark.anyio


def build(settings, backend, bundle=None, hooks=()):
    return GuardService(backend, bundle, settings, list(hooks), ServeMetrics())


def sample(metrics: ServeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_bundle_calibrates_before_the_policy(kit, make_settings, make_bundle):
    path = make_bundle(a=0.5, threshold=0.8)
    service = build(make_settings(escalate_below=None, bundle=str(path)), kit.backend(), CalibrationBundle.load(path))
    await service.start()
    try:
        v = await service.classify(["I will hurt you", "borderline joke"], scope="internal")
    finally:
        await service.aclose()
    # raw 0.97 → sigmoid(0.5 * logit(0.97)) ≈ 0.85: still blocked at 0.8; raw 0.62 → 0.56: escalated
    assert [(x.label, x.action, x.confidence) for x in v] == [("unsafe", "block", 0.85), ("unsafe", "escalate", 0.56)]


async def test_incompatible_bundle_refuses_to_start(kit, make_settings, make_bundle):
    bundle = CalibrationBundle.load(make_bundle(model_id="another-model"))
    backend = kit.backend()
    service = build(make_settings(), backend, bundle)
    with pytest.raises(StartupError, match="model_id 'another-model'"):
        await service.start()
    assert not backend.ready and not service.ready


async def test_backend_with_bad_identity_refuses_to_start(kit, make_settings):
    class Odd(FakeBackend):
        def identity(self):
            return {"model_id": "x"}

    service = build(make_settings(), Odd(kit.table_handler()))
    with pytest.raises(StartupError, match="missing"):
        await service.start()


async def test_not_ready_before_start(kit, make_settings):
    service = build(make_settings(), kit.backend())
    with pytest.raises(NotReadyError):
        await service.classify(["hello there"])


@pytest.mark.parametrize("fail_action", ["escalate", "block"])
async def test_backend_error_fails_closed(kit, make_settings, fail_action):
    def broken(texts):
        if texts == [WARM_UP_TEXT]:
            return kit.scores(0.1)
        raise RuntimeError("CUDA out of memory")

    hook = kit.RecordingHook()
    service = build(make_settings(fail_action=fail_action), kit.backend(broken), hooks=[hook])
    await service.start()
    try:
        v = await service.classify(["hello there", "I will hurt you"], scope="internal")
        rows = await service.outbox.rows()
    finally:
        await service.aclose()
    assert [(x.label, x.action, x.confidence) for x in v] == [("unsafe", fail_action, None)] * 2
    assert sample(service.metrics, "guardcal_backend_errors_total", kind="error") == 1
    assert len(rows) == (2 if fail_action == "escalate" else 0)


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(lambda kit, n: kit.scores(*([0.5] * n), mass=0.0), id="no-decision-token"),
        pytest.param(lambda kit, n: kit.scores(*([0.1] * (n + 1))), id="wrong-length"),
        pytest.param(lambda kit, n: "not scores", id="wrong-type"),
        pytest.param(lambda kit, n: kit.scores(*([float("nan")] * n)), id="nan"),
    ],
)
async def test_unusable_scores_fail_closed(kit, make_settings, result):
    def handler(texts):
        return kit.scores(0.1) if texts == [WARM_UP_TEXT] else result(kit, len(texts))

    service = build(make_settings(), kit.backend(handler))
    await service.start()
    try:
        v = await service.classify(["hello there", "how do I bake bread"])
    finally:
        await service.aclose()
    assert [(x.label, x.action) for x in v] == [("unsafe", "escalate")] * 2


async def test_shadow_mode_answers_allow_but_counts_and_escalates(kit, make_settings):
    hook = kit.RecordingHook()
    service = build(make_settings(mode="shadow"), kit.backend(), hooks=[hook])
    await service.start()
    try:
        v = await service.classify(["I will hurt you", "borderline joke", "hello there"])
        await kit.wait_for(lambda: len(hook.payloads) == 1)
    finally:
        await service.aclose()
    assert [x.action for x in v] == ["allow", "allow", "allow"]
    m = service.metrics
    assert sample(m, "guardcal_requests_total", action="block", label="unsafe") == 1
    assert sample(m, "guardcal_requests_total", action="escalate", label="unsafe") == 1
    assert sample(m, "guardcal_requests_total", action="allow", label="safe") == 1
    assert sample(m, "guardcal_escalations_total", reason="low_confidence") == 1
    payload = hook.payloads[0]
    assert (payload["action"], payload["response_action"], payload["mode"]) == ("escalate", "allow", "shadow")


async def test_escalations_are_in_the_outbox_when_classify_returns(kit, make_settings):
    hook = kit.RecordingHook(fail_first=10**6)  # never accepts: rows must still be there
    service = build(make_settings(), kit.backend(), hooks=[hook, kit.RecordingHook("second", fail_first=10**6)])
    await service.start()
    try:
        v = await service.classify(["borderline joke", "unclear request", "hello there"], request_id="r-9")
        rows = await service.outbox.rows()
    finally:
        await service.aclose()
    escalated = {x.id for x in v if x.action == "escalate"}
    assert len(escalated) == 2
    assert {(r["escalation_id"], r["hook"]) for r in rows} == {
        (i, h) for i in escalated for h in ("recorder", "second")
    }


async def test_hook_failure_never_changes_the_decision(kit, make_settings):
    hook = kit.RecordingHook(fail_first=2)
    service = build(make_settings(), kit.backend(), hooks=[hook])
    await service.start()
    try:
        v = await service.classify(["borderline joke"], request_id="r-1", metadata={"tenant": "t1"})
        await kit.wait_for(lambda: len(hook.payloads) == 1)
    finally:
        await service.aclose()
    assert (v[0].label, v[0].action) == ("unsafe", "escalate")
    m = service.metrics
    assert sample(m, "guardcal_hook_deliveries_total", hook="recorder", outcome="failure") == 2
    assert sample(m, "guardcal_hook_deliveries_total", hook="recorder", outcome="success") == 1
    assert sample(m, "guardcal_hook_retries_total", hook="recorder") == 2
    payload = hook.payloads[0]
    assert payload["id"] == v[0].id and payload["request_id"] == "r-1" and payload["metadata"] == {"tenant": "t1"}
    assert payload["p_unsafe_raw"] == pytest.approx(0.62) and payload["confidence"] == pytest.approx(0.62)
    assert payload["raw_confidence"] == pytest.approx(0.62) and payload["input"] == "borderline joke"
    assert payload["thresholds"]["safe"] == 0.9 and payload["model"]["model_id"] == "fake"


async def test_redaction_replaces_the_input_with_its_hash(kit, make_settings):
    import hashlib

    hook = kit.RecordingHook()
    service = build(make_settings(redact_input=True), kit.backend(), hooks=[hook])
    await service.start()
    try:
        await service.classify(["borderline joke"])
        await kit.wait_for(lambda: len(hook.payloads) == 1)
    finally:
        await service.aclose()
    assert "input" not in hook.payloads[0]
    assert hook.payloads[0]["input_sha256"] == hashlib.sha256(b"borderline joke").hexdigest()


async def test_scores_reach_the_audit_log_at_debug_only(kit, make_settings, caplog):
    service = build(make_settings(), kit.backend())
    await service.start()
    try:
        with caplog.at_level(logging.INFO, logger="guardcal"):
            await service.classify(["borderline joke"])
        info = [r for r in caplog.records if r.levelno >= logging.INFO]
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="guardcal.audit"):
            await service.classify(["borderline joke"])
    finally:
        await service.aclose()
    assert info and all("0.62" not in r.getMessage() for r in info)
    audit = [r for r in caplog.records if r.name == "guardcal.audit"]
    assert audit and all(r.levelno == logging.DEBUG for r in audit)
    assert any("p_unsafe_raw=0.62" in r.getMessage() for r in audit)


def test_service_layer_imports_without_fastapi():
    import subprocess
    import sys

    code = "import sys, guardcal.serve.service; assert 'fastapi' not in sys.modules, 'fastapi imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
