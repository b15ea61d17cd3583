"""The webhook-fault scenario of the reliability benchmark: the receiver healthy, down, answering 500
and slow while the server answers requests, then recovered; every escalation must arrive."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from .load_faults_client import LoadResult, _phase, metric, mixed_texts
    from .load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, WEBHOOK_SECRET, running_server
    from .load_faults_receiver import Receiver, await_delivery, webhook_settings
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_client import LoadResult, _phase, metric, mixed_texts  # type: ignore[no-redef]
    from load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, WEBHOOK_SECRET, running_server  # type: ignore[no-redef]
    from load_faults_receiver import Receiver, await_delivery, webhook_settings  # type: ignore[no-redef]


# --- webhook faults ------------------------------------------------------------------------


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
    try:
        with running_server(kind, workdir, settings, env=env, name=f"{kind}-webhook") as server:
            phases = _receiver_fault_phases(server.base_url, receiver, texts, n_per_phase, concurrency, hold_s)
            expected = [i for p in phases.values() for i in p.escalated_ids]
            complete, recovery_s = await_delivery(receiver, expected)
            depth, failures = _outbox_metrics(server.base_url)
            log = server.log()
    finally:
        receiver.stop()
    return {
        "backend": kind,
        "requests_per_phase": n_per_phase,
        "receiver_slow_s": slow_s,
        "phases": {name: p.summary() for name, p in phases.items()},
        "decisions_equal_to_healthy": _decisions_equal_to_healthy(phases),
        "delivery": {**receiver.delivery(expected), "complete": complete, "recovery_s": round(recovery_s, 2)},
        "outbox_depth_after": depth,
        "failed_deliveries_retried": failures,
        "api_key_in_server_log": CLASSIFY_KEY in log or INTERNAL_KEY in log,
        "webhook_secret_in_server_log": WEBHOOK_SECRET.removeprefix("whsec_") in log,
    }


def _receiver_fault_phases(
    base_url: str, receiver: Receiver, texts: Sequence[str], n: int, concurrency: int, hold_s: float
) -> dict[str, LoadResult]:
    """``n`` requests per receiver state: healthy, down, answering 500, slow (each phase but the first
    lasting at least ``hold_s``); the receiver is left up and answering ok."""
    phases: dict[str, LoadResult] = {}
    phases["healthy"] = _phase(base_url, texts, n, concurrency)
    receiver.stop()
    phases["down"] = _phase(base_url, texts, n, concurrency, hold_s)
    receiver.mode = "error"
    receiver.start()
    phases["error_500"] = _phase(base_url, texts, n, concurrency, hold_s)
    receiver.mode = "slow"
    phases["slow"] = _phase(base_url, texts, n, concurrency, hold_s)
    receiver.mode = "ok"
    return phases


def _outbox_metrics(base_url: str) -> tuple[float | None, float | None]:
    """The server's outbox depth and its count of failed webhook deliveries (retried from the outbox)."""
    internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    depth = metric(base_url, "guardcal_outbox_depth", internal)
    failures = metric(base_url, 'guardcal_hook_deliveries_total{hook="webhook",outcome="failure"}', internal)
    return depth, failures


def _decisions_equal_to_healthy(phases: Mapping[str, LoadResult]) -> dict[str, bool]:
    """Per phase: whether every input got the same decisions as in the healthy phase."""
    baseline = phases["healthy"].decisions
    return {
        name: all(p.decisions.get(t) == baseline.get(t) for t in set(baseline) | set(p.decisions))
        for name, p in phases.items()
    }
