"""Load scenarios of the reliability benchmark: a bounded overload (only documented answers, Retry-After
on every 429/503, latency, the server's RSS at start, peak and end) and the memory soak (the RSS
after each round of requests that all get scored)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from .load_faults_client import MIB, _phase, measure_load, metric, mixed_texts, varied_texts
    from .load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, KEYS, running_server
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_client import MIB, _phase, measure_load, metric, mixed_texts, varied_texts  # type: ignore[no-redef]
    from load_faults_harness import CLASSIFY_KEY, INTERNAL_KEY, KEYS, running_server  # type: ignore[no-redef]


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
