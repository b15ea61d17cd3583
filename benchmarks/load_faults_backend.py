"""The fake backend of the reliability benchmark, and the scenario that breaks it.

``python benchmarks/load_faults.py serve-fake`` serves guardcal's app over a deterministic
``FakeBackend`` (P(unsafe) by a text's first word, an optional delay per batch) whose faults are
switched by files from outside the process: raising, not ready. ``backend_fault_scenario`` flips
those switches while the server answers requests."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx

try:
    from .load_faults_client import _phase, metric
    from .load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, KEYS, running_server
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_client import _phase, metric  # type: ignore[no-redef]
    from load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, KEYS, running_server  # type: ignore[no-redef]

# --- the fake backend server ---------------------------------------------------------------

#: raw P(unsafe) the fake model gives a text, by its first word (anything else: safe)
FAKE_P = {"unsafe": 0.98, "escalate": 0.6, "safe": 0.02}


def fake_p_unsafe(text: str) -> float:
    return FAKE_P.get(text.split(" ", 1)[0], 0.02)


def make_fake_backend(delay_ms: float = 0.0, fail_file: str | None = None, down_file: str | None = None) -> Any:
    """A FakeBackend that sleeps ``delay_ms`` per batch, raises while ``fail_file`` exists and
    reports not ready while ``down_file`` exists (faults switched from outside the process)."""
    import numpy as np

    from guardcal.backends.base import FakeBackend
    from guardcal.core.confidence import Scores

    async def handler(texts: list[str]) -> Scores:
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000.0)
        if fail_file and os.path.exists(fail_file):
            raise RuntimeError("injected backend failure")
        p = np.array([fake_p_unsafe(t) for t in texts], dtype=np.float64)
        return Scores(p_safe=1.0 - p, p_unsafe=p)

    class SwitchedBackend(FakeBackend):
        _up = False

        @property  # type: ignore[override]
        def ready(self) -> bool:
            return self._up and not (down_file and os.path.exists(down_file))

        @ready.setter
        def ready(self, value: bool) -> None:
            self._up = value

    return SwitchedBackend(handler)


def serve_fake() -> None:
    """``serve-fake``: guardcal's app and ``serve()`` over the fake backend; settings from GUARDCAL_*."""
    from guardcal.cli import configure_logging
    from guardcal.serve.app import serve
    from guardcal.serve.settings import ServeSettings

    configure_logging("serve")  # as `guardcal serve` does: the library leaves logging to its caller
    backend = make_fake_backend(
        float(os.environ.get("FAKE_DELAY_MS", "0")),
        os.environ.get("FAKE_FAIL_FILE"),
        os.environ.get("FAKE_DOWN_FILE"),
    )
    serve(ServeSettings.load(), backend)


# --- backend faults ------------------------------------------------------------------------


def backend_fault_scenario(kind: str, workdir: Path, *, n: int = 30) -> dict[str, Any]:
    """The fake backend raising (fail closed: escalate, never allow, never 5xx) and reporting not
    ready (/readyz and /classify 503 with Retry-After), switched by files while the server runs."""
    fail_file, down_file = workdir / "backend-fail", workdir / "backend-down"
    fail_file.unlink(missing_ok=True)
    down_file.unlink(missing_ok=True)
    settings = {"outbox": workdir / f"{kind}-backend-outbox.sqlite3", "api_keys": KEYS}
    fake = {"FAKE_FAIL_FILE": str(fail_file), "FAKE_DOWN_FILE": str(down_file)}
    auth = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
    texts = ["safe hello", "unsafe threat", "escalate maybe"]
    out: dict[str, Any] = {"backend": kind}
    with running_server(kind, workdir, settings, env=fake, name=f"{kind}-backend") as server:
        out["healthy"] = _phase(server.base_url, texts, n, 4).summary()
        fail_file.touch()
        failing = _phase(server.base_url, texts, n, 4)
        out["raising"] = {**failing.summary(), "decisions": sorted({d for s in failing.decisions.values() for d in s})}
        fail_file.unlink()
        down_file.touch()
        ready = httpx.get(server.base_url + "/readyz", timeout=10)
        classify = httpx.post(server.base_url + "/classify", json={"input": "safe hello"}, headers=auth, timeout=10)
        out["not_ready"] = {
            "readyz": ready.status_code,
            "readyz_retry_after": ready.headers.get("retry-after"),
            "classify": classify.status_code,
            "classify_retry_after": classify.headers.get("retry-after"),
            "healthz": httpx.get(server.base_url + "/healthz", timeout=10).status_code,
        }
        down_file.unlink()
        out["recovered"] = {
            "readyz": httpx.get(server.base_url + "/readyz", timeout=10).status_code,
            **_phase(server.base_url, texts, n, 4).summary(),
        }
        internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
        out["backend_errors_counted"] = metric(
            server.base_url, 'guardcal_backend_errors_total{kind="error"}', internal
        )
    return out
