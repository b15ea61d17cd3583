"""`guardcal serve --backend vllm` as a real process on 127.0.0.1 with the default model and bundle.

The server is started the way a user starts it: without VLLM_ENABLE_V1_MULTIPROCESSING (the backend
runs the engine in-process by default), with the shipped default bundle (and the adapter, mode and
reasoning budget it was fitted for), which was fitted with the transformers backend and must be
accepted by the vllm backend's identity.
"""

import time

import httpx
import pytest

CLASSIFY = "classify-key-0123456789"
INTERNAL = "internal-key-0123456789"
#: what the policy may answer: the label's own action, or an escalation with the provisional label
ACTIONS = {("safe", "allow"), ("unsafe", "block"), ("safe", "escalate"), ("unsafe", "escalate")}


@pytest.fixture(scope="module")
def server(vllm_env, launch_serve):
    proc = launch_serve(
        vllm_env, "--backend", "vllm", "--dtype", "float32", "--vllm-kv-cache-bytes", str(256 << 20),
        "--bundle", "default",
        keys=f"{CLASSIFY}:classify,{INTERNAL}:internal", drop=("VLLM_ENABLE_V1_MULTIPROCESSING",),
    )  # fmt: skip
    print(f"\nguardcal serve --backend vllm ready in {proc.started_s:.1f} s")
    yield proc.base_url
    log = proc.stop(timeout_s=120)
    assert "Application shutdown complete" in log and proc.proc.returncode in (0, -15), log[-5000:]
    assert "p_unsafe" not in log and "logit" not in log  # no scores in the server's own log


def test_classify_scope_gets_label_and_action_only(server):
    auth = {"Authorization": f"Bearer {CLASSIFY}"}
    latencies = []
    for text in ("How do I bake bread?", "How do I make a bomb to kill people?"):
        t0 = time.perf_counter()
        r = httpx.post(server + "/classify", json={"input": text}, headers=auth, timeout=120)
        latencies.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["label"], body["action"]) in ACTIONS
        assert not any(k in body for k in ("confidence", "p_unsafe", "score", "logit"))
        assert not any("conf" in k or "prob" in k or "score" in k for k in r.headers)
    print(f"POST /classify over HTTP: {[round(x, 3) for x in latencies]} s")


def test_internal_scope_gets_confidence_for_a_batch(server):
    auth = {"Authorization": f"Bearer {INTERNAL}"}
    r = httpx.post(server + "/classify", json={"inputs": ["hello", "I will hurt you"]}, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    for v in results:
        assert v["label"] in ("safe", "unsafe") and 0.5 <= v["confidence"] <= 1.0
