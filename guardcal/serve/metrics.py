"""Prometheus metrics of one server, in its own registry (two apps in one process never clash).

Scores appear only as the aggregate histogram of the calibrated confidence; no per-request
value is exported. ``requests_total`` counts classified inputs (a batch of 8 adds 8) by the
policy's action, which in shadow mode is the would-be action, not the ``allow`` answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

if TYPE_CHECKING:
    from fastapi import FastAPI


class ServeMetrics:
    """The server's counters, histograms and gauges (all named ``guardcal_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "guardcal_requests", "Classified inputs by policy action and label", ["action", "label"], registry=r
        )
        self.latency = Histogram(
            "guardcal_request_latency_seconds", "Time to answer POST /classify", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("guardcal_batch_size", "Inputs per request", buckets=BATCH_BUCKETS, registry=r)
        self.confidence = Histogram(
            "guardcal_confidence", "Calibrated confidence max(p, 1-p)", buckets=CONFIDENCE_BUCKETS, registry=r
        )
        self.escalations = Counter("guardcal_escalations", "Escalated inputs by reason", ["reason"], registry=r)
        self.hook_deliveries = Counter(
            "guardcal_hook_deliveries", "Escalation deliveries by hook and outcome", ["hook", "outcome"], registry=r
        )
        self.hook_retries = Counter("guardcal_hook_retries", "Repeated delivery attempts", ["hook"], registry=r)
        self.outbox_depth = Gauge("guardcal_outbox_depth", "Escalation deliveries still pending", registry=r)
        self.queue_depth = Gauge("guardcal_queue_depth", "Requests admitted and not yet answered", registry=r)
        self.backend_errors = Counter(
            "guardcal_backend_errors", "Backend failures answered fail-closed", ["kind"], registry=r
        )
        self.rejected = Counter("guardcal_rejected_requests", "Requests refused by status code", ["code"], registry=r)
        self.audit_samples = Counter(
            "guardcal_audit_samples",
            "Confident decisions sent for review as audit samples, by label and whether the outbox stored them",
            ["label", "outcome"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


def attach_metrics(app: FastAPI, metrics: ServeMetrics, dependencies: Sequence[Any] = ()) -> None:
    """Serve ``GET /metrics`` (Prometheus text) from ``metrics``; ``dependencies`` guard it (auth)."""
    from fastapi import Response  # the HTTP layer only; the service imports this module without FastAPI

    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        dependencies=list(dependencies),
        include_in_schema=False,
        response_model=None,
    )
