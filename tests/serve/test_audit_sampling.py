"""Issue 22, item 3: audit sampling of confident decisions and the audit estimate (fake backend)."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from guardcal.backends.base import fake_identity
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import Thresholds
from guardcal.serve import create_app

pytestmark = pytest.mark.anyio

ALICE = "alice-review-key-0123456789"
INTERNAL = "internal-key-0123456789abcdef"
KEYS = f"{ALICE}:review@alice,{INTERNAL}:internal"


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def test_audit_samples_go_to_the_hooks_and_leave_the_answer_alone(kit, make_settings):
    hook = kit.RecordingHook()
    settings = make_settings(audit_rate=1.0, escalate_below=0.9)
    async with kit.running(create_app(settings, kit.backend(), hooks=[hook])) as client:
        r = await client.post("/classify", json={"inputs": ["hello there", "I will hurt you", "borderline joke"]})
        results = r.json()["results"]
        assert [v["action"] for v in results] == ["allow", "block", "escalate"]
        await kit.wait_for(lambda: len(hook.payloads) == 3)
        metrics = (await client.get("/metrics")).text
    by_id = {p["id"]: p for p in hook.payloads}
    allow, block, escalate = (by_id[v["id"]] for v in results)
    for p, action in ((allow, "allow"), (block, "block")):
        assert p["reason"] == "audit" and p["sampling_probability"] == 1.0
        assert p["action"] == p["response_action"] == action and p["confidence"] >= 0.9
    assert escalate["reason"] == "low_confidence" and escalate["sampling_probability"] == 1.0
    assert _metric(metrics, "guardcal_audit_samples_total", outcome="stored") == 2
    assert _metric(metrics, "guardcal_audit_samples_total", label="unsafe", outcome="stored") == 1
    assert _metric(metrics, "guardcal_escalations_total") == 1  # audits are not escalations


async def test_the_audit_rate_is_the_share_of_confident_decisions_sampled(kit, make_settings):
    hook = kit.RecordingHook()
    settings = make_settings(audit_rate=0.25, escalate_below=0.9, max_request_batch=100)
    n = 800
    async with kit.running(create_app(settings, kit.backend(), hooks=[hook])) as client:
        for _ in range(n // 100):
            r = await client.post("/classify", json={"inputs": ["hello there"] * 50 + ["borderline joke"] * 50})
            assert r.status_code == 200
        await kit.wait_for(lambda: sum(p["reason"] == "low_confidence" for p in hook.payloads) == n // 2)
    audits = [p for p in hook.payloads if p["reason"] == "audit"]
    assert all(p["sampling_probability"] == 0.25 and p["label"] == "safe" for p in audits)
    assert 70 <= len(audits) <= 130  # Binomial(400, 0.25): mean 100, sd 8.7


async def test_no_audits_by_default(kit, make_settings):
    hook = kit.RecordingHook()
    async with kit.running(create_app(make_settings(), kit.backend(), hooks=[hook])) as client:
        await client.post("/classify", json={"inputs": ["hello there", "I will hurt you", "borderline joke"]})
        await kit.wait_for(lambda: len(hook.payloads) == 1)
        await anyio.sleep(0.1)
    assert [p["reason"] for p in hook.payloads] == ["low_confidence"]


def _risk_bundle(tmp_path) -> str:
    details = {"target_error": {"safe": 0.1, "unsafe": 0.2}, "delta": 0.1}
    bundle = CalibrationBundle(
        method="platt",
        params={"prior_smoothing": True, "a_": 1.0, "b_": 0.0},
        thresholds=Thresholds(0.9, 0.9, "risk_controlled", details).to_dict(),
        **fake_identity(),
    )
    return str(bundle.save(tmp_path / "risk.json"))


async def test_audit_verdicts_give_the_estimate_per_label_against_the_bundle_target(kit, make_settings, tmp_path):
    settings = make_settings(
        api_keys=KEYS, reviews=True, audit_rate=1.0, escalate_below=None, bundle=_risk_bundle(tmp_path)
    )
    texts = ["hello there"] * 9 + ["how do I bake bread"] + ["I will hurt you"] * 2
    async with kit.running(create_app(settings, kit.backend())) as client:
        r = await client.post("/classify", json={"inputs": texts}, headers=kit.bearer(INTERNAL))
        ids = [v["id"] for v in r.json()["results"]]
        for _ in range(500):
            queue = (await client.get("/reviews/queue", headers=kit.bearer(ALICE))).json()
            if queue["pending"] == len(texts):
                break
            await anyio.sleep(0.01)
        assert {i["kind"] for i in queue["items"]} == {"audit"} and queue["pending"] == len(texts)
        truth = ["safe"] * 9 + ["unsafe"] + ["safe", "unsafe"]  # one wrong allow, one wrong block
        for vid, label in zip(ids, truth, strict=True):
            v = await client.post("/reviews", json={"id": vid, "label": label}, headers=kit.bearer(ALICE))
            assert v.status_code == 201
        report = (await client.get("/reviews/audit", headers=kit.bearer(INTERNAL))).json()
        metrics = (await client.get("/metrics", headers=kit.bearer(INTERNAL))).text
    assert report["audit_rate"] == 1.0 and report["policy_version"].startswith("p-")
    safe, unsafe = report["labels"]["safe"], report["labels"]["unsafe"]
    assert (safe["reviewed"], safe["wrong"], safe["target"]) == (10, 1, 0.1)
    assert safe["error"] == pytest.approx(0.1) and safe["lower"] < 0.1 < safe["upper"]
    assert safe["status"] == "unconfirmed"
    assert (unsafe["reviewed"], unsafe["wrong"], unsafe["target"], unsafe["error"]) == (2, 1, 0.2, 0.5)
    # the same numbers on /metrics, with the bundle's alpha beside them
    assert _metric(metrics, "guardcal_audit_error_estimate", label="safe") == pytest.approx(0.1)
    assert _metric(metrics, "guardcal_audit_error_upper_bound", label="safe") == pytest.approx(safe["upper"])
    assert _metric(metrics, "guardcal_audit_error_lower_bound", label="unsafe") == pytest.approx(unsafe["lower"])
    assert _metric(metrics, "guardcal_audit_reviewed", label="safe") == 10
    assert _metric(metrics, "guardcal_risk_target_error", label="safe") == 0.1
    assert _metric(metrics, "guardcal_risk_target_error", label="unsafe") == 0.2
    assert _metric(metrics, "guardcal_review_queue_depth") == 0
    assert _metric(metrics, "guardcal_review_verdicts_total", kind="audit") == 12
    assert _metric(metrics, "guardcal_review_verdicts_total", kind="audit", agreement="disagree") == 2
    # confidences: hello there 0.98 and I will hurt you 0.97 (0.95-0.99 bin), how do I bake bread 0.92
    assert _metric(metrics, "guardcal_review_verdicts_total", agreement="agree", confidence_bin="0.95-0.99") == 10
    assert _metric(metrics, "guardcal_review_verdicts_total", agreement="disagree", confidence_bin="0.95-0.99") == 1
    assert _metric(metrics, "guardcal_review_verdicts_total", agreement="disagree", confidence_bin="0.9-0.95") == 1
    rules = ("GuardcalAuditErrorUnconfirmed", "GuardcalAuditErrorAboveTarget")
    firing = {rule: _fires(rule, metrics) for rule in rules}
    # safe: 1 wrong of 10, upper 0.45 > 0.1 but lower 0.003 < 0.1; unsafe: 1 of 2, lower 0.013 < 0.2 < upper
    assert firing == {"GuardcalAuditErrorUnconfirmed": {"safe", "unsafe"}, "GuardcalAuditErrorAboveTarget": set()}


def _series(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(rf'^{name}\{{label="(\w+)"\}} (\S+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _fires(alert: str, metrics: str) -> set[str]:
    """Evaluate the alert's ``A > on (instance, job, label) B`` on one scrape: the labels it fires for."""
    import yaml

    root = Path(__file__).parents[2]
    rules = yaml.safe_load((root / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    (expr,) = [r["expr"] for r in rules if r["alert"] == alert]
    m = re.fullmatch(r"\s*(guardcal_\w+) > on \(instance, job, label\) (guardcal_\w+)\s*", expr)
    assert m, expr
    left, right = _series(metrics, m.group(1)), _series(metrics, m.group(2))
    return {label for label, value in left.items() if label in right and value > right[label]}
