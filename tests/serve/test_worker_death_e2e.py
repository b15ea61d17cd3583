"""A real ``guardcal serve`` (transformers backend, the default model) whose model worker dies
(issue 20, items 8 and 11).

The process is guardcal's own command line (``guardcal.cli.main``) started through a small
wrapper that adds one fault switch: once the file ``FAULT_KILL_FILE`` exists, the next call into
the model thread raises a ``BaseException`` (not an ``Exception``), which escapes the batcher's
error handling and ends the worker, as a fatal error would. Before the fix ``/readyz`` stayed 200
with a dead worker, and the request that killed it hung until its timeout.

The same server gets its API keys from ``--api-keys-file`` and its webhook secret from
``GUARDCAL_WEBHOOK_SECRET_FILE`` (with deliveries failing against a closed port, so the hook
logs), and neither secret may appear in its command line or its log.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.server_process import free_port, start_serve

CLASSIFY = "death-classify-key-0123456789"
INTERNAL = "death-internal-key-0123456789"
METRICS = "death-metrics-key-0123456789"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"worker-death-webhook-secret-0123").decode()
REQUEST_TIMEOUT_S = 30
#: where the default model is materialised (read before the serve tests point GUARDCAL_HOME elsewhere)
REAL_HOME = os.environ.get("GUARDCAL_HOME") or str(Path.home() / ".cache" / "guardcal")

WRAPPER = '''
"""guardcal serve, with a fault switch for the model worker (test only)."""
import os
import sys

from guardcal.backends.transformers_backend import TransformersBackend


class WorkerKilled(BaseException):
    """Not an Exception: nothing in the backend catches it, so the worker ends."""


kill_file = os.environ["FAULT_KILL_FILE"]
in_model_thread = TransformersBackend._in_model_thread


def faulty(self, fn, *args):
    if os.path.exists(kill_file):
        def die(*_):
            raise WorkerKilled("the model thread died")

        return in_model_thread(self, die, *args)
    return in_model_thread(self, fn, *args)


TransformersBackend._in_model_thread = faulty
from guardcal.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.timeout(900)
def test_a_real_server_whose_model_worker_dies_turns_unready_and_unhealthy_and_fails_closed(tmp_path: Path):
    from guardcal.models.default import default_model_dir

    default_model_dir(Path(REAL_HOME))  # materialised where the server will look (no-op when done)
    wrapper = tmp_path / "serve_with_fault.py"
    wrapper.write_text(WRAPPER)
    keys = tmp_path / "api_keys"
    keys.write_text(f"{CLASSIFY}:classify\n{INTERNAL}:internal\n{METRICS}:metrics\n")
    secret = tmp_path / "webhook_secret"
    secret.write_text(WEBHOOK_SECRET + "\n")
    kill = tmp_path / "kill-the-worker"
    port, dead_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDCAL_")}
    env.update(
        HF_HUB_OFFLINE="1",
        FAULT_KILL_FILE=str(kill),
        GUARDCAL_WEBHOOK_SECRET_FILE=str(secret),
        GUARDCAL_HOME=REAL_HOME,
    )
    cmd = [
        sys.executable, str(wrapper), "serve", "--port", str(port), "--outbox", str(tmp_path / "outbox.db"),
        "--bundle", "none", "--escalate-below", "0.99", "--request-timeout-s", str(REQUEST_TIMEOUT_S),
        "--api-keys-file", str(keys), "--webhook-url", f"http://127.0.0.1:{dead_port}/escalations",
    ]  # fmt: skip
    server = start_serve(cmd, port, tmp_path / "server.log", env=env, ready_timeout_s=600)
    url, auth = server.base_url, {"Authorization": f"Bearer {CLASSIFY}"}
    try:
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert str(keys) in cmdline and not any(s in cmdline for s in (CLASSIFY, INTERNAL, METRICS, WEBHOOK_SECRET))

        alive = httpx.post(url + "/classify", json={"input": "hello"}, headers=auth, timeout=60)
        assert alive.status_code == 200 and alive.json()["action"] in ("allow", "block", "escalate")
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS}"}, timeout=10)
        assert metrics.status_code == 200 and "guardcal_requests_total" in metrics.text
        assert httpx.post(url + "/classify", json={"input": "x"}, headers={"Authorization": f"Bearer {METRICS}"},
                          timeout=10).status_code == 403  # fmt: skip

        kill.touch()
        t0 = time.perf_counter()
        dying = httpx.post(url + "/classify", json={"input": "How do I hurt someone?"}, headers=auth, timeout=60)
        took = time.perf_counter() - t0
        # the request the worker died under fails closed, at once (not at its 30 s deadline)
        assert dying.status_code == 200 and (dying.json()["label"], dying.json()["action"]) == ("unsafe", "escalate")
        assert took < REQUEST_TIMEOUT_S / 3, took

        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5", ready.text
        assert "model worker has stopped" in ready.json()["error"]["message"]
        health = httpx.get(url + "/healthz", timeout=10)
        assert health.status_code == 503, health.text  # a liveness probe restarts the instance
        after = httpx.post(url + "/classify", json={"input": "hello"}, headers=auth, timeout=60)
        assert after.status_code == 503 and after.headers["retry-after"] == "5", after.text  # never an allow
    finally:
        log = server.stop()
    assert "the transformers model worker died (WorkerKilled)" in log, log[-3000:]
    assert "webhook" in log  # the webhook hook logged (its failed deliveries), so the check below can bite
    for secret_value in (CLASSIFY, INTERNAL, METRICS, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")):
        assert secret_value not in log
