"""`guardcal serve --backend vllm` as a real process on 127.0.0.1 with the default model and bundle.

The server is started the way a user starts it: without VLLM_ENABLE_V1_MULTIPROCESSING (the backend
runs the engine in-process by default), with the shipped default bundle, which was fitted with the
transformers backend and must be accepted by the vllm backend's identity. That bundle certifies no
threshold on the untrained model, so every request escalates.
"""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

CLASSIFY = "classify-key-0123456789"
INTERNAL = "internal-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(vllm_env):
    port = _free_port()
    env = {**os.environ, "GUARDCAL_API_KEYS": f"{CLASSIFY}:classify,{INTERNAL}:internal", "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    cmd = [
        sys.executable, "-m", "guardcal.cli", "serve", "--backend", "vllm", "--port", str(port),
        "--dtype", "float32", "--vllm-kv-cache-bytes", str(256 << 20), "--bundle", "default",
        "--outbox", str(vllm_env / "outbox.db"),
    ]  # fmt: skip
    log_path = vllm_env / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    t0, deadline = time.time(), time.time() + 600
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"server did not become ready:\n{log_path.read_text()[-5000:]}")
        time.sleep(1)
    print(f"\nguardcal serve --backend vllm ready in {time.time() - t0:.1f} s")
    yield base
    proc.terminate()
    proc.wait(timeout=120)
    log = log_path.read_text()
    assert "Application shutdown complete" in log and proc.returncode in (0, -15), log[-5000:]
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
        assert body["label"] in ("safe", "unsafe") and body["action"] == "escalate"  # the bundle certifies nothing
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
