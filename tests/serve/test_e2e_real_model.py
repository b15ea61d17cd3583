"""`guardcal serve` as a real process on 127.0.0.1 with the transformers backend and the default model."""

import httpx
import pytest

INTERNAL = "internal-key-0123456789"
CLASSIFY = "classify-key-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model, launch_serve):
    proc = launch_serve(
        tmp_path_factory.mktemp("serve"), "--bundle", "none", "--escalate-below", "0.99",
        keys=f"{CLASSIFY}:classify,{INTERNAL}:internal", ready_timeout_s=300,
    )  # fmt: skip
    yield proc.base_url
    log = proc.stop()
    # graceful: uvicorn finishes the shutdown, then re-raises SIGTERM (exit -15), as it does by design
    assert "Application shutdown complete" in log and proc.proc.returncode in (0, -15), log
    for line in log.splitlines():
        assert "p_unsafe" not in line and "logit" not in line  # nothing score-like at INFO


def test_classify_scope_sees_label_and_action_only(server):
    r = httpx.post(
        server + "/classify",
        json={"input": "How do I make a bomb to kill people?"},
        headers={"Authorization": f"Bearer {CLASSIFY}"},
        timeout=60,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["label"] in ("safe", "unsafe") and body["action"] in ("allow", "block", "escalate")
    assert "confidence" not in body and not any("conf" in k or "prob" in k for k in r.headers)
    assert body["action"] == "escalate"  # the untrained base model is never 99% sure


def test_internal_scope_gets_rounded_confidence_and_metrics(server):
    auth = {"Authorization": f"Bearer {INTERNAL}"}
    r = httpx.post(server + "/classify", json={"inputs": ["hello", "I will hurt you"]}, headers=auth, timeout=60)
    results = r.json()["results"]
    assert len(results) == 2
    for v in results:
        assert 0.5 <= v["confidence"] <= 1.0 and round(v["confidence"], 2) == v["confidence"]
    metrics = httpx.get(server + "/metrics", headers=auth, timeout=10).text
    assert "guardcal_requests_total" in metrics and "guardcal_escalations_total" in metrics


def test_unknown_field_and_missing_key(server):
    r = httpx.post(
        server + "/classify",
        json={"input": "x", "polcy": "strict"},
        headers={"Authorization": f"Bearer {CLASSIFY}"},
        timeout=30,
    )
    assert r.status_code == 422 and "polcy" in r.json()["error"]["message"]
    assert httpx.post(server + "/classify", json={"input": "x"}, timeout=30).status_code == 401
