"""Prometheus metrics of one server, in its own registry (two apps in one process never clash).

Scores appear only as the aggregate histogram of the calibrated confidence; no per-request
value is exported. ``requests_total`` counts classified inputs (a batch of 8 adds 8) by the
policy's action, which in shadow mode is the would-be action, not the ``allow`` answered.

Live calibration (issue 22, docs/review.md): ``review_verdicts_total`` counts reviewers' verdicts by
kind (escalation / audit), agreement with the guard's label and calibrated-confidence bin, so
``agree / all`` per bin is the accuracy a reliability diagram compares with the bin's confidence. The
``audit_error_*`` gauges are the running policy's auto-decision error per predicted label, estimated
from reviewed audit samples (``guardcal.calibrate.audit``: estimate, Clopper-Pearson bounds, reviews),
and ``risk_target_error`` is the bundle's alpha per label, so an alert can compare the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
#: the calibrated-confidence bins verdicts are counted in (``confidence_bin`` label)
VERDICT_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def confidence_bin(confidence: float | None) -> str:
    """The ``confidence_bin`` label of a calibrated confidence: ``"0.8-0.9"``, ... ``"0.99-1"``, ``"none"``."""
    if confidence is None:
        return "none"
    for lo, hi in zip(VERDICT_BINS, VERDICT_BINS[1:], strict=False):
        if confidence < hi:
            return f"{lo:g}-{hi:g}"
    return f"{VERDICT_BINS[-2]:g}-1"


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
        self._add_review_metrics(r)

    def _add_review_metrics(self, r: CollectorRegistry) -> None:
        """Audit samples, verdicts, the review queue, the audit estimate and the bundle's targets (issue 22)."""
        self.audit_samples = Counter(
            "guardcal_audit_samples",
            "Confident decisions sent for review as audit samples, by label and whether the outbox stored them",
            ["label", "outcome"],
            registry=r,
        )
        self.verdicts = Counter(
            "guardcal_review_verdicts",
            "Reviewers' verdicts by kind (escalation/audit), agreement with the guard's label and confidence bin",
            ["kind", "agreement", "confidence_bin"],
            registry=r,
        )
        self.review_queue = Gauge("guardcal_review_queue_depth", "Review items without a verdict", registry=r)
        per_label = "of the running policy's auto-decisions, per predicted label, from reviewed audit samples"
        self.audit_error = Gauge(
            "guardcal_audit_error_estimate", f"Estimated error {per_label}", ["label"], registry=r
        )
        self.audit_lower = Gauge(
            "guardcal_audit_error_lower_bound", f"Clopper-Pearson lower bound of the error {per_label}", ["label"],
            registry=r,
        )  # fmt: skip
        self.audit_upper = Gauge(
            "guardcal_audit_error_upper_bound", f"Clopper-Pearson upper bound of the error {per_label}", ["label"],
            registry=r,
        )  # fmt: skip
        self.audit_reviewed = Gauge(
            "guardcal_audit_reviewed", "Reviewed audit samples of the running policy, per predicted label", ["label"],
            registry=r,
        )  # fmt: skip
        self.risk_target = Gauge(
            "guardcal_risk_target_error",
            "The bundle's risk-control target alpha per label (absent for fixed thresholds)",
            ["label"],
            registry=r,
        )
        self.bundle_reloads = Counter(
            "guardcal_bundle_reloads",
            "Calibration bundle reloads by outcome (swapped/refused)",
            ["outcome"],
            registry=r,
        )

    def set_audit(self, estimates: Mapping[str, Any], targets: Mapping[str, float]) -> None:
        """Export the audit estimates (``calibrate.audit.ErrorEstimate`` per label) and the bundle's targets."""
        gauges = (self.audit_error, self.audit_lower, self.audit_upper, self.audit_reviewed, self.risk_target)
        for gauge in gauges:
            gauge.clear()
        for label, alpha in targets.items():
            self.risk_target.labels(label=label).set(alpha)
        for label, est in estimates.items():
            self.audit_error.labels(label=label).set(est.error)
            self.audit_lower.labels(label=label).set(est.lower)
            self.audit_upper.labels(label=label).set(est.upper)
            self.audit_reviewed.labels(label=label).set(est.reviewed)

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
