"""Reliability of ``guardcal serve``, measured on 127.0.0.1: load, webhook faults, SIGKILL, SIGTERM.

Every scenario runs the server as a real process (uvicorn, the real app from
``guardcal.serve.create_app``): either ``python -m guardcal.cli serve`` with the real
transformers backend and the default model, or this file's ``serve-fake`` entry, which
serves the same app over a deterministic ``FakeBackend`` (the HTTP layer without a model).
Escalations go to a real webhook receiver (uvicorn, in this process) that can be down,
slow or answering 500; "count in" is the escalations the server answered, "count out"
what the receiver accepted (2xx).

    python benchmarks/load_faults.py                    # writes benchmarks/results/reliability.json
    python benchmarks/load_faults.py --quick --skip-transformers
    python benchmarks/load_faults.py serve-fake         # the fake-backend server, settings from GUARDCAL_*

The tests (tests/serve/test_load.py, test_faults.py) call these functions with small sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

try:
    from .server_process import ServeProcess, free_port, serve_command, start_serve
except ImportError:  # run as a script: python benchmarks/NAME.py
    from server_process import ServeProcess, free_port, serve_command, start_serve  # type: ignore[no-redef]

RESULTS = Path(__file__).parent / "results" / "reliability.json"
CLASSIFY_KEY = "load-classify-key-0123456789abcdef"
INTERNAL_KEY = "load-internal-key-0123456789abcdef"
KEYS = f"{CLASSIFY_KEY}:classify,{INTERNAL_KEY}:internal"
WEBHOOK_SECRET = "whsec_bG9hZC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5YWI="  # Standard Webhooks format, 32 bytes
DOCUMENTED = {200, 429, 503}  # what /classify may answer a well-formed request under load

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


# --- server processes ----------------------------------------------------------------------


def server_env(settings: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server process: ``settings`` as GUARDCAL_* variables, then ``extra``
    (e.g. FAKE_* switches, or GUARDCAL_HOME where the default model is materialised)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUARDCAL_", "FAKE_"))}
    if "GUARDCAL_HOME" in os.environ:
        env["GUARDCAL_HOME"] = os.environ["GUARDCAL_HOME"]
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
    for name, value in settings.items():
        if value is not None:
            env["GUARDCAL_" + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(extra or {})
    return env


def start_server(
    kind: str,
    workdir: Path,
    settings: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_timeout_s: float = 900.0,
    name: str = "server",
) -> ServeProcess:
    """Start ``kind`` ("fake" or "transformers") and wait for ``/readyz`` 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # a fixed threshold instead of a bundle: none fits the fake model, and for the real one this pins the
    # base model in direct mode (the shipped bundle would bring its own adapter and mode)
    settings = {"bundle": "none", "escalate_below": 0.9, **settings}
    if kind == "fake":
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve-fake"]
    elif kind == "transformers":
        cmd = serve_command("--backend", "transformers")
    else:
        raise ValueError(f"unknown server kind {kind!r}; use 'fake' or 'transformers'")
    environ = server_env({"host": "127.0.0.1", "port": port, **settings}, env)
    try:
        return start_serve(
            cmd, port, workdir / f"{name}-{port}.log", env=environ, cwd=workdir, ready_timeout_s=ready_timeout_s
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{kind} server: {exc}") from None


@contextlib.contextmanager
def running_server(kind: str, workdir: Path, settings: Mapping[str, Any], **kw: Any) -> Iterator[ServeProcess]:
    server = start_server(kind, workdir, settings, **kw)
    try:
        yield server
    finally:
        server.stop()


class RssSampler:
    """Samples a process's resident memory every ``every_s`` seconds in a thread."""

    def __init__(self, server: ServeProcess, every_s: float = 0.2) -> None:
        self.server, self.every_s = server, every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(self.server.rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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


# --- load ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class LoadResult:
    sent: int = 0
    status: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0
    bad_bodies: int = 0
    latencies_s: list[float] = field(default_factory=list)
    latencies_by_action: dict[str, list[float]] = field(default_factory=dict)
    escalated_ids: list[str] = field(default_factory=list)
    decisions: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        undocumented = {k: v for k, v in self.status.items() if not (k.isdigit() and int(k) in DOCUMENTED)}
        return {
            "requests_sent": self.sent,
            "status": dict(sorted(self.status.items())),
            "undocumented_responses": sum(undocumented.values()),
            "server_errors_5xx": sum(
                v for k, v in self.status.items() if k.isdigit() and int(k) >= 500 and k != "503"
            ),
            "missing_retry_after": self.missing_retry_after,
            "bad_bodies": self.bad_bodies,
            "escalations": len(self.escalated_ids),
            "inputs_with_changing_decisions": sum(len(seen) > 1 for seen in self.decisions.values()),
            "wall_s": round(self.wall_s, 2),
            "throughput_rps": round(self.sent / self.wall_s, 1) if self.wall_s else None,
            "latency_ok_ms": {
                q: None if (v := percentile(self.latencies_s, p)) is None else round(v * 1000, 1)
                for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
            "latency_p50_ms_by_action": {
                action: round((percentile(values, 0.5) or 0.0) * 1000, 1)
                for action, values in sorted(self.latencies_by_action.items())
            },
        }


VERDICT_KEYS = {"id", "label", "action", "request_id", "model_version", "policy_version"}


async def run_load(
    base_url: str,
    texts: Sequence[str],
    n: int,
    concurrency: int,
    *,
    headers: Mapping[str, str] | None = None,
    retry_after_scale: float = 0.0,
    timeout_s: float = 120.0,
) -> LoadResult:
    """POST ``n`` single-input requests with ``concurrency`` workers; each 429/503 is counted and,
    with ``retry_after_scale``, followed by a sleep of Retry-After × scale (the request is not re-sent)."""
    result = LoadResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    todo = iter(range(n))
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s) as client:

        async def worker() -> None:
            for i in todo:
                text = texts[i % len(texts)]
                result.sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/classify", json={"input": text}, headers=dict(headers or {}))
                except httpx.HTTPError as exc:
                    result.status[type(exc).__name__] += 1
                    continue
                took = time.perf_counter() - t0
                result.status[str(r.status_code)] += 1
                if r.status_code == 200:
                    body = r.json()
                    if not set(body) <= VERDICT_KEYS or body.get("action") not in ("allow", "block", "escalate"):
                        result.bad_bodies += 1
                    result.latencies_s.append(took)
                    result.latencies_by_action.setdefault(body["action"], []).append(took)
                    result.decisions.setdefault(text, set()).add((body["label"], body["action"]))
                    if body["action"] == "escalate":
                        result.escalated_ids.append(body["id"])
                elif r.status_code in (429, 503):
                    retry_after = r.headers.get("retry-after")
                    if retry_after is None or not retry_after.isdigit():
                        result.missing_retry_after += 1
                    elif retry_after_scale:
                        await asyncio.sleep(int(retry_after) * retry_after_scale)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - t0
    return result


def mixed_texts(n: int = 30) -> list[str]:
    """Texts the fake model allows, blocks and escalates, one third each."""
    kinds = ("safe", "unsafe", "escalate")
    return [f"{kinds[i % 3]} text number {i}" for i in range(n)]


def metric(base_url: str, name: str, headers: Mapping[str, str] | None = None) -> float | None:
    """One sample from the server's /metrics, e.g. ``guardcal_outbox_depth`` or ``x_total{kind="error"}``."""
    text = httpx.get(base_url + "/metrics", headers=dict(headers or {}), timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


MIB = 1024 * 1024


def measure_load(
    server: ServeProcess,
    texts: Sequence[str],
    *,
    n: int,
    concurrency: int,
    warmup: int = 0,
    retry_after_scale: float = 0.0,
) -> tuple[LoadResult, LoadResult, dict[str, float]]:
    """``warmup`` requests, then ``n`` measured ones; the server's RSS (MiB) before, at the peak
    of and after the measured run."""
    auth = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
    warm = LoadResult()
    if warmup:
        scale = max(retry_after_scale, 0.05)
        warm = asyncio.run(
            run_load(server.base_url, texts, warmup, concurrency, headers=auth, retry_after_scale=scale)
        )
    time.sleep(0.5)
    rss_start = server.rss()
    with RssSampler(server) as sampler:
        result = asyncio.run(
            run_load(server.base_url, texts, n, concurrency, headers=auth, retry_after_scale=retry_after_scale)
        )
    time.sleep(0.5)
    rss_end = server.rss()
    peak = max([rss_start, rss_end, *sampler.samples])
    rss = {
        "start": round(rss_start / MIB, 1),
        "peak": round(peak / MIB, 1),
        "end": round(rss_end / MIB, 1),
        "growth": round((rss_end - rss_start) / MIB, 1),
    }
    return warm, result, rss


def load_scenario(
    kind: str,
    workdir: Path,
    *,
    n: int,
    concurrency: int = 64,
    warmup: int = 0,
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    texts: Sequence[str] | None = None,
    retry_after_scale: float = 0.0,
) -> dict[str, Any]:
    """Start a server, warm it with ``warmup`` requests, then send ``n`` at ``concurrency``;
    report responses, latency and the server's RSS at start, peak and end of the measured run."""
    base: dict[str, Any] = {"outbox": workdir / f"{kind}-load-outbox.sqlite3", "api_keys": KEYS}
    texts = list(texts or mixed_texts())
    with running_server(kind, workdir, {**base, **(settings or {})}, env=env, name=f"{kind}-load") as server:
        warm, result, rss = measure_load(
            server, texts, n=n, concurrency=concurrency, warmup=warmup, retry_after_scale=retry_after_scale
        )
        internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
        answered = metric(server.base_url, "guardcal_request_latency_seconds_count", internal)
        log = server.log()
    return {
        "backend": kind,
        "concurrency": concurrency,
        "settings": {k: str(v) for k, v in (settings or {}).items()},
        "env": dict(env or {}),
        "warmup": {k: v for k, v in warm.summary().items() if k in ("requests_sent", "status", "escalations")},
        **result.summary(),
        "server_classified_total": answered,
        "server_start_s": round(server.started_s, 1),
        "rss_mib": rss,
        "api_key_in_server_log": CLASSIFY_KEY in log or INTERNAL_KEY in log,
        "server_5xx_in_log": " 500 " in log,
    }


def varied_texts(n: int = 48) -> list[str]:
    """Texts of many lengths (so batches take many shapes), a third of them escalating."""
    kinds = ("safe", "unsafe", "escalate")
    return [f"{kinds[i % 3]} " + " ".join(f"word{j}" for j in range(1 + (i * 7) % 60)) for i in range(n)]


def memory_soak_scenario(
    kind: str,
    workdir: Path,
    *,
    rounds: int = 4,
    per_round: int = 100,
    concurrency: int = 8,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Rounds of requests that all get scored (concurrency below the queue size), the server's
    RSS after each: memory that keeps growing round after round would be a leak."""
    settings = {"outbox": workdir / f"{kind}-soak-outbox.sqlite3", "api_keys": KEYS}
    texts = varied_texts()
    with running_server(kind, workdir, settings, env=env, name=f"{kind}-soak") as server:
        rss = [server.rss()]
        phases = []
        for _ in range(rounds):
            phases.append(_phase(server.base_url, texts, per_round, concurrency).summary())
            rss.append(server.rss())
        log = server.log()
    return {
        "backend": kind,
        "rounds": rounds,
        "requests_per_round": per_round,
        "concurrency": concurrency,
        "status": dict(sum((Counter(p["status"]) for p in phases), Counter())),
        "throughput_rps_by_round": [p["throughput_rps"] for p in phases],
        "latency_p50_ms_by_round": [p["latency_ok_ms"]["p50"] for p in phases],
        "rss_mib_before_and_after_each_round": [round(r / MIB, 1) for r in rss],
        "rss_growth_mib_after_first_round": round((rss[-1] - rss[1]) / MIB, 1),
        "api_key_in_server_log": CLASSIFY_KEY in log or INTERNAL_KEY in log,
    }


# --- webhook faults ------------------------------------------------------------------------


def _phase(base_url: str, texts: Sequence[str], n: int, concurrency: int, hold_s: float = 0.0) -> LoadResult:
    """``n`` requests, then wait until ``hold_s`` has passed (so the outbox worker acts in this phase)."""
    t0 = time.perf_counter()
    auth = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
    result = asyncio.run(run_load(base_url, texts, n, concurrency, headers=auth))
    time.sleep(max(0.0, hold_s - (time.perf_counter() - t0)))
    return result


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


def webhook_fault_scenario(
    kind: str,
    workdir: Path,
    *,
    n_per_phase: int = 60,
    concurrency: int = 8,
    slow_s: float = 5.0,
    hold_s: float = 3.0,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The receiver healthy, down, slow and answering 500 while the server answers requests; then it
    recovers and every escalation must arrive, once each here (the guarantee is at-least-once; these
    runs lose no 2xx, so a duplicate would be a bug). Decisions and latency per phase."""
    receiver = Receiver()
    receiver.slow_s = slow_s
    receiver.start()
    settings = webhook_settings(
        workdir / f"{kind}-webhook-outbox.sqlite3",
        receiver,
        webhook_timeout_s=slow_s + 3.0,
        hook_retry_base_s=0.05,
        hook_retry_max_s=0.5,
    )
    texts = mixed_texts()
    phases: dict[str, LoadResult] = {}
    try:
        with running_server(kind, workdir, settings, env=env, name=f"{kind}-webhook") as server:
            phases["healthy"] = _phase(server.base_url, texts, n_per_phase, concurrency)
            receiver.stop()
            phases["down"] = _phase(server.base_url, texts, n_per_phase, concurrency, hold_s)
            receiver.mode = "error"
            receiver.start()
            phases["error_500"] = _phase(server.base_url, texts, n_per_phase, concurrency, hold_s)
            receiver.mode = "slow"
            phases["slow"] = _phase(server.base_url, texts, n_per_phase, concurrency, hold_s)
            receiver.mode = "ok"
            expected = [i for p in phases.values() for i in p.escalated_ids]
            t0 = time.perf_counter()
            complete = receiver.wait_for(set(expected), timeout_s=120)
            recovery_s = time.perf_counter() - t0
            time.sleep(1.0)  # room for a duplicate to show up
            internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
            depth = metric(server.base_url, "guardcal_outbox_depth", internal)
            failures = metric(
                server.base_url, 'guardcal_hook_deliveries_total{hook="webhook",outcome="failure"}', internal
            )
            log = server.log()
    finally:
        receiver.stop()
    baseline = phases["healthy"].decisions
    return {
        "backend": kind,
        "requests_per_phase": n_per_phase,
        "receiver_slow_s": slow_s,
        "phases": {name: p.summary() for name, p in phases.items()},
        "decisions_equal_to_healthy": {
            name: all(p.decisions.get(t) == baseline.get(t) for t in set(baseline) | set(p.decisions))
            for name, p in phases.items()
        },
        "delivery": {**receiver.delivery(expected), "complete": complete, "recovery_s": round(recovery_s, 2)},
        "outbox_depth_after": depth,
        "failed_deliveries_retried": failures,
        "api_key_in_server_log": CLASSIFY_KEY in log or INTERNAL_KEY in log,
        "webhook_secret_in_server_log": WEBHOOK_SECRET.removeprefix("whsec_") in log,
    }


# --- SIGKILL and restart -------------------------------------------------------------------


def outbox_states(path: Path) -> dict[str, int]:
    """Rows per state in an outbox file (read while no server writes it)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall())


def kill_restart_scenario(
    kind: str,
    workdir: Path,
    *,
    n_before: int = 40,
    n_after: int = 10,
    concurrency: int = 8,
    warmup: int = 0,
    retry_after_scale: float = 0.0,
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Escalate (``warmup`` + ``n_before`` requests at ``concurrency``, RSS measured) while the
    receiver is down, SIGKILL the server, restart it on the same outbox, bring the receiver up:
    every escalation from both lives arrives, once each here (at-least-once in general)."""
    receiver = Receiver()
    outbox = workdir / f"{kind}-kill-outbox.sqlite3"
    settings = webhook_settings(outbox, receiver, escalate_below=1.0, **(settings or {}))  # every input escalates
    texts = mixed_texts()
    first = start_server(kind, workdir, settings, env=env, name=f"{kind}-kill-1")
    try:
        warm, before, rss = measure_load(
            first, texts, n=n_before, concurrency=concurrency, warmup=warmup, retry_after_scale=retry_after_scale
        )
        log = first.log()
    finally:
        first.signal(signal.SIGKILL)
        first_rc = first.wait(30)
    states_after_kill = outbox_states(outbox)
    receiver.start()
    try:
        with running_server(kind, workdir, settings, env=env, name=f"{kind}-kill-2") as second:
            after = _phase(second.base_url, texts, n_after, concurrency)
            expected = warm.escalated_ids + before.escalated_ids + after.escalated_ids
            t0 = time.perf_counter()
            complete = receiver.wait_for(set(expected), timeout_s=120)
            recovery_s = time.perf_counter() - t0
            time.sleep(1.0)
            restart_s = second.started_s
    finally:
        receiver.stop()
    return {
        "backend": kind,
        "concurrency": concurrency,
        "settings": {k: str(v) for k, v in (settings or {}).items() if k in ("queue_size", "max_concurrency")},
        "warmup": warm.summary(),
        "before_kill": before.summary(),
        "before_kill_rss_mib": rss,
        "api_key_in_server_log": CLASSIFY_KEY in log or INTERNAL_KEY in log,
        "after_restart": after.summary(),
        "kill_exit_code": first_rc,
        "outbox_after_kill": states_after_kill,
        "outbox_at_end": outbox_states(outbox),
        "restart_ready_s": round(restart_s, 1),
        "delivery": {**receiver.delivery(expected), "complete": complete, "recovery_s": round(recovery_s, 2)},
    }


# --- SIGTERM -------------------------------------------------------------------------------


def sigterm_scenario(
    kind: str, workdir: Path, *, in_flight: int = 8, delay_ms: int = 1500, flush: bool = False
) -> dict[str, Any]:
    """Requests in flight when SIGTERM arrives finish with 200; a new connection afterwards is
    refused; escalations stay in the outbox (receiver down) or are flushed (receiver up), and a
    restarted server delivers what was kept (once each here; at-least-once in general)."""
    receiver = Receiver()
    outbox = workdir / f"{kind}-term-outbox.sqlite3"
    settings = webhook_settings(outbox, receiver, drain_timeout_s=30)
    if flush:
        receiver.start()
    auth = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
    server = start_server(kind, workdir, settings, env={"FAKE_DELAY_MS": str(delay_ms)}, name=f"{kind}-term")

    async def scenario() -> tuple[list[httpx.Response | BaseException], str, float]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            tasks = [
                asyncio.create_task(client.post("/classify", json={"input": f"escalate in flight {i}"}, headers=auth))
                for i in range(in_flight)
            ]
            internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # all admitted: being scored or waiting for a slot
                text = (await client.get("/metrics", headers=internal)).text
                if f"guardcal_queue_depth {float(in_flight)}" in text:
                    break
                await asyncio.sleep(0.02)
            server.signal(signal.SIGTERM)
            t_term = time.perf_counter()
            await asyncio.sleep(0.3)
            try:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as fresh:
                    late = await fresh.post("/classify", json={"input": "safe late"}, headers=auth)
                new_request = f"HTTP {late.status_code}"
            except httpx.TransportError as exc:
                new_request = type(exc).__name__
            answers = await asyncio.gather(*tasks, return_exceptions=True)
            return answers, new_request, time.perf_counter() - t_term

    try:
        answers, new_request, drain_s = asyncio.run(scenario())
        rc = server.wait(60)
    finally:
        server.stop()
    log = server.log()
    ok = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
    escalated = [a.json()["id"] for a in ok if a.json()["action"] == "escalate"]
    kept = outbox_states(outbox)
    if flush:
        receiver.wait_for(set(escalated), timeout_s=5)
    delivered_by_first = len(receiver.ids())
    receiver.start()
    try:
        with running_server(kind, workdir, settings, name=f"{kind}-term-2"):
            complete = receiver.wait_for(set(escalated), timeout_s=60)
            time.sleep(1.0)
    finally:
        receiver.stop()
    return {
        "backend": kind,
        "in_flight": in_flight,
        "in_flight_ok": len(ok),
        "in_flight_other": [getattr(a, "status_code", repr(a)) for a in answers if a not in ok],
        "new_request_after_sigterm": new_request,
        "drain_s": round(drain_s, 2),
        "exit_code": rc,
        "shutdown_complete_logged": "Application shutdown complete" in log,
        "outbox_after_exit": kept,
        "delivered_before_exit": delivered_by_first,
        "delivery_after_restart": {**receiver.delivery(escalated), "complete": complete},
    }


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


# --- the script ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_average_1m_5m_at_start": [round(load1, 2), round(load5, 2)],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=("measure", "serve-fake"), default="measure")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, help="server logs and outbox files (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="test sizes")
    parser.add_argument("--skip-transformers", action="store_true", help="fake backend only (no model)")
    parser.add_argument("--only", help="comma list of scenarios to (re)run; the others are kept from --output")
    args = parser.parse_args(argv)
    if args.command == "serve-fake":
        serve_fake()
        return 0
    import tempfile

    from guardcal import __version__

    q = args.quick
    work = args.workdir or Path(tempfile.mkdtemp(prefix="guardcal-reliability-"))
    report: dict[str, Any] = {"guardcal_version": __version__, "machine": machine(), "quick": q}
    started = time.time()
    steps: list[tuple[str, Any]] = [
        (
            "load_fake",
            lambda: load_scenario(
                "fake",
                work,
                n=1000 if q else 10_000,
                warmup=200,
                settings={"queue_size": 32, "max_concurrency": 4},
                env={"FAKE_DELAY_MS": "5"},
                retry_after_scale=0.01,
            ),
        ),
        ("webhook_faults_fake", lambda: webhook_fault_scenario("fake", work, n_per_phase=30 if q else 200)),
        ("kill_restart_fake", lambda: kill_restart_scenario("fake", work, n_before=30 if q else 300, n_after=20)),
        ("sigterm_kept_fake", lambda: sigterm_scenario("fake", work, in_flight=8)),
        ("sigterm_flushed_fake", lambda: sigterm_scenario("fake", work, in_flight=8, flush=True)),
        ("backend_faults_fake", lambda: backend_fault_scenario("fake", work)),
    ]
    if not args.skip_transformers:
        steps.append(
            (
                "memory_soak_transformers",
                lambda: memory_soak_scenario("transformers", work, rounds=4 if q else 8, per_round=25 if q else 100),
            )
        )
        steps.append(
            (
                "load_kill_restart_transformers",
                lambda: kill_restart_scenario(
                    "transformers",
                    work,
                    n_before=200 if q else 500,
                    n_after=4,
                    concurrency=64,
                    warmup=64,
                    retry_after_scale=0.2,
                    settings={"queue_size": 8, "max_concurrency": 4, "max_request_batch": 8},
                ),
            )
        )
    if args.only:
        wanted = set(args.only.split(","))
        if unknown := wanted - {name for name, _ in steps}:
            parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {[name for name, _ in steps]}")
        steps = [(name, step) for name, step in steps if name in wanted]
        if args.output.is_file():
            report = json.loads(args.output.read_text())
        report["machine"][f"load_average_1m_5m_at_start_of_{args.only}"] = machine()["load_average_1m_5m_at_start"]
    for name, step in steps:
        t0 = time.perf_counter()
        print(f"{name} ...", flush=True)
        report[name] = step()
        report[name]["scenario_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report[name], indent=2, default=str), flush=True)
    took = round(time.time() - started, 1)
    if args.only:
        report["machine"][f"load_average_1m_5m_at_end_of_{args.only}"] = [round(x, 2) for x in os.getloadavg()[:2]]
    else:
        report["total_s"] = took
        report["machine"]["load_average_1m_5m_at_end"] = [round(x, 2) for x in os.getloadavg()[:2]]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.output} ({took} s; server logs in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
