"""The webhook receiver of the reliability benchmark (uvicorn on 127.0.0.1, in the benchmark's process):
healthy, down, slow or answering 500; it checks every signature and counts what it accepted. Also
the server settings that point the signed webhook at it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from .load_faults_harness import KEYS, WEBHOOK_SECRET
    from .server_process import free_port
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_harness import KEYS, WEBHOOK_SECRET  # type: ignore[no-redef]
    from server_process import free_port  # type: ignore[no-redef]


# --- the webhook receiver ------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1: ``mode`` ok (204), error (500) or slow (204 after
    ``slow_s``); ``stop()`` takes it down (connection refused) and ``start()`` brings it back
    on the same port. Checks every HMAC signature; records accepted payload ids."""

    def __init__(self, port: int | None = None, secret: str = WEBHOOK_SECRET) -> None:
        self.port = port or free_port()
        self.secret = secret
        self.mode = "ok"
        self.slow_s = 2.0
        self.lock = threading.Lock()
        self.attempts = 0
        self.attempts_by_mode: Counter[str] = Counter()
        self.accepted: list[str] = []
        self.bad_signatures = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _endpoint(self, request: Any) -> Any:
        from standardwebhooks import Webhook, WebhookVerificationError
        from starlette.responses import Response

        body = await request.body()
        with self.lock:
            self.attempts += 1
            mode = self.mode
            self.attempts_by_mode[mode] += 1
            try:  # the Standard Webhooks signature, checked by the reference package
                Webhook(self.secret).verify(body, dict(request.headers), json_parse=False)
            except WebhookVerificationError:
                self.bad_signatures += 1
                return Response(status_code=401)
        if mode == "error":
            return Response(status_code=500)
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        with self.lock:
            self.accepted.append(json.loads(body)["id"])
        return Response(status_code=204)

    def start(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        if self._server is not None:
            return
        app = Starlette(routes=[Route("/hook", self._endpoint, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"webhook receiver did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def ids(self) -> list[str]:
        with self.lock:
            return list(self.accepted)

    def wait_for(self, expected: set[str], timeout_s: float) -> bool:
        """Wait until every id in ``expected`` was accepted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if expected <= set(self.ids()):
                return True
            time.sleep(0.05)
        return expected <= set(self.ids())

    def delivery(self, expected: Sequence[str]) -> dict[str, Any]:
        """Count in (``expected``) against count out (accepted), with duplicates and strays."""
        got = self.ids()
        counts = Counter(got)
        return {
            "escalations_in": len(expected),
            "accepted_out": len(got),
            "unique_out": len(counts),
            "duplicates": sum(c - 1 for c in counts.values()),
            "missing": len(set(expected) - set(counts)),
            "unexpected": len(set(counts) - set(expected)),
            "receiver_attempts": self.attempts,
            "receiver_attempts_by_mode": dict(self.attempts_by_mode),
            "bad_signatures": self.bad_signatures,
        }


def webhook_settings(outbox: Path, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    """Server settings for the scenarios: the signed webhook to ``receiver`` as the only hook,
    no in-call retries, quick outbox retries; ``extra`` adds or overrides settings."""
    return {
        "outbox": outbox,
        "api_keys": KEYS,
        "webhook_url": receiver.url,
        "webhook_secret": WEBHOOK_SECRET,
        "webhook_timeout_s": 2.0,
        "webhook_retries": 0,
        "hook_retry_base_s": 0.2,
        "hook_retry_max_s": 1.0,
        "hooks": "webhook",
        **extra,
    }


def await_delivery(receiver: Receiver, expected: Sequence[str]) -> tuple[bool, float]:
    """Wait (up to 120 s) until ``receiver`` accepted every id in ``expected``, then a second more:
    whether all arrived, and how long that took (seconds)."""
    t0 = time.perf_counter()
    complete = receiver.wait_for(set(expected), timeout_s=120)
    recovery_s = time.perf_counter() - t0
    time.sleep(1.0)  # room for a duplicate to show up
    return complete, recovery_s
