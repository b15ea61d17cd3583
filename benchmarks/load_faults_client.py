"""The load side of the reliability benchmark: ``POST /classify`` from many async workers
(``run_load``), what came back (``LoadResult``: statuses, Retry-After, latency, decisions,
escalation ids), the texts sent, one ``/metrics`` sample, and a measured run with the server's RSS."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

try:
    from .load_faults_harness import CLASSIFY_KEY, RssSampler
    from .server_process import ServeProcess
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_harness import CLASSIFY_KEY, RssSampler  # type: ignore[no-redef]
    from server_process import ServeProcess  # type: ignore[no-redef]

DOCUMENTED = {200, 429, 503}  # what /classify may answer a well-formed request under load


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


def varied_texts(n: int = 48) -> list[str]:
    """Texts of many lengths (so batches take many shapes), a third of them escalating."""
    kinds = ("safe", "unsafe", "escalate")
    return [f"{kinds[i % 3]} " + " ".join(f"word{j}" for j in range(1 + (i * 7) % 60)) for i in range(n)]


def _phase(base_url: str, texts: Sequence[str], n: int, concurrency: int, hold_s: float = 0.0) -> LoadResult:
    """``n`` requests, then wait until ``hold_s`` has passed (so the outbox worker acts in this phase)."""
    t0 = time.perf_counter()
    auth = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
    result = asyncio.run(run_load(base_url, texts, n, concurrency, headers=auth))
    time.sleep(max(0.0, hold_s - (time.perf_counter() - t0)))
    return result
