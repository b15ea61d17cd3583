"""Process scenarios of the reliability benchmark: SIGKILL with escalations in the outbox and a restart
on the same outbox, and SIGTERM with requests in flight (drain, then kept or flushed escalations)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

try:
    from .load_faults_client import LoadResult, _phase, measure_load, mixed_texts
    from .load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, ServeProcess, running_server, start_server
    from .load_faults_receiver import Receiver, await_delivery, webhook_settings
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_client import LoadResult, _phase, measure_load, mixed_texts  # type: ignore[no-redef]
    from load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, ServeProcess, running_server, start_server  # type: ignore[no-redef]
    from load_faults_receiver import Receiver, await_delivery, webhook_settings  # type: ignore[no-redef]


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
    warm, before, rss, log, first_rc = _load_then_kill(
        first, texts, n=n_before, concurrency=concurrency, warmup=warmup, retry_after_scale=retry_after_scale
    )
    states_after_kill = outbox_states(outbox)
    receiver.start()
    try:
        with running_server(kind, workdir, settings, env=env, name=f"{kind}-kill-2") as second:
            after = _phase(second.base_url, texts, n_after, concurrency)
            expected = warm.escalated_ids + before.escalated_ids + after.escalated_ids
            complete, recovery_s = await_delivery(receiver, expected)
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


def _load_then_kill(
    server: ServeProcess, texts: Sequence[str], **load: Any
) -> tuple[LoadResult, LoadResult, dict[str, float], str, int]:
    """``measure_load(server, texts, **load)``, then SIGKILL: its results, the server's log and exit code."""
    try:
        warm, before, rss = measure_load(server, texts, **load)
        log = server.log()
    finally:
        server.signal(signal.SIGKILL)
        rc = server.wait(30)
    return warm, before, rss, log, rc


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
    try:
        answers, new_request, drain_s = asyncio.run(_sigterm_in_flight(server, in_flight, auth))
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
    complete = _deliver_after_restart(kind, workdir, settings, receiver, escalated)
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


async def _sigterm_in_flight(
    server: ServeProcess, in_flight: int, auth: Mapping[str, str]
) -> tuple[list[httpx.Response | BaseException], str, float]:
    """``in_flight`` escalating requests, all admitted, then SIGTERM and one request on a new
    connection: the in-flight answers, what the new request got, and the seconds from SIGTERM to
    the last answer."""
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


def _deliver_after_restart(
    kind: str, workdir: Path, settings: Mapping[str, Any], receiver: Receiver, escalated: list[str]
) -> bool:
    """Bring the receiver up and restart the server on the same outbox: whether every id in
    ``escalated`` arrives within 60 s (then a second more for a duplicate to show up)."""
    receiver.start()
    try:
        with running_server(kind, workdir, settings, name=f"{kind}-term-2"):
            complete = receiver.wait_for(set(escalated), timeout_s=60)
            time.sleep(1.0)
    finally:
        receiver.stop()
    return complete
