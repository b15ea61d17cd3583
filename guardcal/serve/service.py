"""The classifier service: backend → calibrator → policy → escalation outbox → metrics.

No FastAPI here: routes only translate HTTP to :meth:`GuardService.classify` and back.

Where numbers go: the response gets a label and an action (plus the calibrated confidence
rounded to 2 decimals for the ``internal`` scope); raw and calibrated probabilities go only to
escalation hooks (through the outbox) and to the ``guardcal.audit`` logger at DEBUG. INFO and
WARNING lines carry ids, labels, actions, counts and exception types, never a score.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardcal.backends.base import IDENTITY_KEYS, ClassifierBackend, check_identity
from guardcal.calibrate.audit import ErrorEstimate, audit_estimates, bundle_targets
from guardcal.calibrate.base import Calibrator
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import Thresholds
from guardcal.core.confidence import Scores
from guardcal.errors import BackendError, CalibrationError, InputTooLongError
from guardcal.serve.active import ActivePolicy, check_fits, digest, uncertified
from guardcal.serve.active import resolve_thresholds as resolve_thresholds  # re-exported
from guardcal.serve.errors import (
    BundleRefusedError,
    NotReadyError,
    NotStoredError,
    OutboxFullError,
    OverloadedError,
    StartupError,
)
from guardcal.serve.hooks import EscalationHook, escalation_payload
from guardcal.serve.metrics import ServeMetrics, confidence_bin
from guardcal.serve.outbox import DeliveryWorker, Outbox
from guardcal.serve.policy import Decision, decide_batch, fail_closed
from guardcal.serve.protocol import Verdict
from guardcal.serve.readings import readings
from guardcal.serve.reviews import ReviewHook, ReviewStore, VerdictResult
from guardcal.serve.settings import Scope, ServeSettings

WARM_UP_TEXT = "Hello, how are you today?"
#: part of a request's deadline kept for the outbox write: scoring stops this much earlier (a quarter, at most
#: 1 s: a cold SQLite write with its fsync took over 0.2 s on a loaded CI machine)
WRITE_RESERVE_FRACTION, WRITE_RESERVE_MAX_S = 0.25, 1.0
#: while /readyz is 503 after failures in a row, it probes the backend at most this often, this long
PROBE_EVERY_S, PROBE_TIMEOUT_S = 5.0, 2.0

_log = logging.getLogger("guardcal.serve")
_audit = logging.getLogger("guardcal.audit")


def load_bundle(settings: ServeSettings) -> CalibrationBundle | None:
    """The configured calibration bundle, or None; a bad file is a StartupError."""
    path = settings.bundle_path()
    if path is None:
        return None
    try:
        return CalibrationBundle.load(path)
    except CalibrationError as exc:
        raise StartupError(f"cannot use calibration bundle: {exc}") from None


class Admission:
    """A bounded queue: at most ``queue_size`` requests admitted, ``concurrency`` of them scoring."""

    def __init__(self, queue_size: int, concurrency: int, metrics: ServeMetrics) -> None:
        self.queue_size = queue_size
        self._semaphore = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._metrics = metrics

    @property
    def admitted(self) -> int:
        return self._admitted

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a queue place; OverloadedError at once when none is free."""
        if self._admitted >= self.queue_size:
            raise OverloadedError(f"all {self.queue_size} request slots are taken; retry shortly")
        self._admitted += 1
        self._metrics.queue_depth.set(self._admitted)
        try:
            yield
        finally:
            self._admitted -= 1
            self._metrics.queue_depth.set(self._admitted)

    @contextlib.asynccontextmanager
    async def scoring(self) -> AsyncIterator[None]:
        async with self._semaphore:
            yield


class GuardService:
    """Classifies texts with a backend, a calibration bundle (optional) and the serve settings."""

    def __init__(
        self,
        backend: ClassifierBackend,
        bundle: CalibrationBundle | None,
        settings: ServeSettings,
        hooks: Sequence[EscalationHook],
        metrics: ServeMetrics,
        outbox: Outbox | None = None,
        reviews: ReviewStore | None = None,
    ) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self.reviews = reviews
        self.hooks = list(hooks)
        for hook in self.hooks:
            if isinstance(hook, ReviewHook):
                hook.on_stored = self.refresh_queue
        self.policy = ActivePolicy.build(settings, bundle)
        self.audit_rate = settings.audit_rate
        self._draw = random.Random()  # audit draws: independent of the input and its label
        self._reload_lock = asyncio.Lock()
        self.outbox = outbox if outbox is not None else Outbox(settings.outbox, max_bytes=settings.outbox_max_bytes)
        self.worker = DeliveryWorker(
            self.outbox,
            self.hooks,
            metrics,
            base_delay_s=settings.hook_retry_base_s,
            max_delay_s=settings.hook_retry_max_s,
            lease_s=settings.hook_timeout_s + 30.0,  # outlasts any one delivery
            hook_timeout_s=settings.hook_timeout_s,
            retention_s=settings.outbox_retention_s,
        )
        self.admission = Admission(settings.queue_size, settings.max_concurrency, metrics)
        self.identity: dict[str, Any] = {}
        self.model_version = "unknown"
        self._started = self._draining = False
        self.failures_in_a_row = 0
        self._probed_at = -PROBE_EVERY_S

    @property
    def bundle(self) -> CalibrationBundle | None:
        return self.policy.bundle

    @property
    def thresholds(self) -> Thresholds:
        return self.policy.thresholds

    @property
    def calibrator(self) -> Calibrator | None:
        return self.policy.calibrator

    @property
    def policy_version(self) -> str:
        return self.policy.version

    @property
    def worker_died(self) -> bool:
        """The backend's model worker stopped while serving (it does not come back: restart the server)."""
        return self._started and not self._draining and not self.backend.alive()

    def _not_serving(self) -> str | None:
        """Why ``/classify`` cannot be answered now (503), or None."""
        if not self._started:
            return "the classifier is starting; retry shortly"
        if self._draining:
            return "the classifier is shutting down; retry on another instance"
        if self.worker_died:
            return "the model worker has stopped; this instance must be restarted"
        if not self.backend.ready:
            return "the backend is not ready; retry shortly"
        return None

    def unready_reason(self) -> str | None:
        """Why ``/readyz`` is 503 (not serving, or ``unready_after_failures`` backend failures in a row), or None."""
        reason = self._not_serving()
        if reason is None and self.failures_in_a_row >= self.settings.unready_after_failures:
            reason = f"the last {self.failures_in_a_row} backend calls failed; probing the backend"
        return reason

    @property
    def ready(self) -> bool:
        return self.unready_reason() is None

    async def check_ready(self) -> str | None:
        """:meth:`unready_reason`, after probing a failing backend (at most every ``PROBE_EVERY_S``):
        without traffic (a load balancer stops sending it) nothing else would clear the failures."""
        if self._not_serving() is not None or self.failures_in_a_row < self.settings.unready_after_failures:
            return self.unready_reason()
        now = asyncio.get_running_loop().time()
        if now - self._probed_at >= PROBE_EVERY_S:
            self._probed_at = now
            try:
                scores = await asyncio.wait_for(
                    self._scored([WARM_UP_TEXT]), min(PROBE_TIMEOUT_S, self.settings.request_timeout_s)
                )
                readings(scores, 1, self.calibrator)
            except Exception as exc:  # still failing: stay unready
                _log.warning("backend probe failed (%s); /readyz stays 503", type(exc).__name__)
            else:
                _log.info("backend probe succeeded after %d failures in a row; ready again", self.failures_in_a_row)
                self.failures_in_a_row = 0
        return self.unready_reason()

    def _failed(self) -> None:
        self.failures_in_a_row += 1
        if self.failures_in_a_row == self.settings.unready_after_failures:
            _log.error(
                "%d backend failures in a row: /readyz answers 503 until a probe succeeds", self.failures_in_a_row
            )

    async def start(self) -> None:
        """Start the backend, check the bundle against it, open the outbox, start delivering, warm up."""
        await self.backend.start()
        try:
            self.identity = check_identity(self.backend.identity())
            if self.bundle is not None:
                self.bundle.check_compatible(**self.identity)
        except (CalibrationError, BackendError) as exc:
            await self.backend.aclose()
            raise StartupError(f"refusing to start: the calibration bundle does not fit the backend: {exc}") from None
        self.model_version = digest("m-", {k: self.identity[k] for k in IDENTITY_KEYS})
        self.outbox.open()
        if self.reviews is not None:
            self.reviews.open()
            if "review" not in self.settings.key_scopes().values():
                _log.warning("--reviews is on but no API key has the review scope: add KEY:review@NAME to review")
        await self.refresh_reviews()
        self.worker.start()
        await self._warm_up()
        self._started = True
        _log.info(
            "guardcal serving backend=%s model=%s model_version=%s policy_version=%s mode=%s hooks=%s",
            self.backend.name,
            self.identity["model_id"],
            self.model_version,
            self.policy_version,
            self.settings.mode,
            ",".join(h.name for h in self.hooks) or "none",
        )
        _audit.debug("thresholds %s", json.dumps(self.thresholds.to_dict(), default=str))
        if warning := uncertified(self.policy):
            _log.warning("%s", warning)

    async def _warm_up(self) -> None:
        try:
            await asyncio.wait_for(self.backend.score([WARM_UP_TEXT]), self.settings.request_timeout_s)
        except Exception as exc:  # serving still fails closed; make the problem visible
            self.metrics.backend_errors.labels(kind="warmup").inc()
            self._failed()
            _log.error(
                "backend warm-up request failed (%s); requests will fail closed until it recovers", type(exc).__name__
            )

    async def verdict_recorded(self, result: VerdictResult) -> None:
        """A reviewer's verdict was stored (review_routes): count it, refresh the queue depth and estimates."""
        item = result.item
        agreement = "agree" if result.label == item["label"] else "disagree"
        bin_ = confidence_bin(item["confidence"])
        self.metrics.verdicts.labels(kind=item["kind"], agreement=agreement, confidence_bin=bin_).inc()
        await self.refresh_reviews()

    async def refresh_reviews(self) -> None:
        """Export the review queue's depth and the running policy's audit estimates (after a verdict, a new
        item, a bundle swap, and at start)."""
        await self.refresh_queue()
        estimates = await self.audit_report()
        self.metrics.set_audit(estimates, bundle_targets(self.policy.thresholds.to_dict()))

    async def refresh_queue(self) -> None:
        if self.reviews is not None:
            self.metrics.review_queue.set(await self.reviews.pending())

    async def audit_report(self) -> dict[str, ErrorEstimate]:
        """The auto-decision error per predicted label, estimated from the reviewed audit samples of the running
        model and policy (``calibrate.audit``), each compared with the bundle's risk-control target."""
        if self.reviews is None:
            return {}
        policy = self.policy
        rows = await self.reviews.audited(self.model_version, policy.version)
        targets = bundle_targets(policy.thresholds.to_dict())
        return audit_estimates(((r["label"], r["verdict"], r["sampling_probability"]) for r in rows), targets)

    async def reload_bundle(self) -> tuple[str, str]:
        """Swap in the configured bundle file anew (SIGHUP, ``POST /admin/reload-bundle``); returns the previous
        and the new policy version. A bundle that cannot be read or does not fit the running model (the
        start-up check) raises BundleRefusedError and the running policy stays. Requests in flight finish on
        the policy they began with; the next ones take the new one."""
        async with self._reload_lock:
            path = self.settings.bundle_path()
            old = self.policy
            try:
                if path is None:
                    raise CalibrationError("this server runs without a calibration bundle (--bundle none)")
                bundle = await asyncio.to_thread(CalibrationBundle.load, path)
                check_fits(bundle, self.identity, self.settings)
                policy = ActivePolicy.build(self.settings, bundle)
            except (CalibrationError, StartupError) as exc:
                self.metrics.bundle_reloads.labels(outcome="refused").inc()
                _log.error("bundle reload refused, still serving policy_version=%s: %s", old.version, exc)
                raise BundleRefusedError(f"the bundle was not swapped in: {exc}") from None
            self.policy = policy
            self.metrics.bundle_reloads.labels(outcome="swapped").inc()
            _log.info("bundle reloaded from %s: policy_version %s -> %s", path, old.version, policy.version)
            _audit.debug("thresholds %s", json.dumps(policy.thresholds.to_dict(), default=str))
            if warning := uncertified(policy):
                _log.warning("%s", warning)
        await self.refresh_reviews()
        return old.version, policy.version

    async def aclose(self) -> None:
        """Stop taking requests, stop the outbox worker (pending rows stay), close hooks and backend."""
        self._draining = True
        await self.worker.stop()
        for hook in self.hooks:
            closer = getattr(hook, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        await self.backend.aclose()
        self.outbox.close()
        if self.reviews is not None:
            self.reviews.close()
        self._started = False

    async def classify(
        self,
        texts: list[str],
        *,
        request_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        scope: Scope = "classify",
    ) -> list[Verdict]:
        """One verdict per text; raises NotReadyError (not serving; or an escalation that could not be
        stored with ``fail_action`` escalate) or OverloadedError (queue full).

        One deadline (``request_timeout_s``) covers the queue, scoring and the outbox write. The request
        decides with the policy active when it began, even if a new bundle is swapped in meanwhile.
        """
        verdicts, _ = await self.classify_versioned(texts, request_id=request_id, metadata=metadata, scope=scope)
        return verdicts

    async def classify_versioned(
        self,
        texts: list[str],
        *,
        request_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        scope: Scope = "classify",
    ) -> tuple[list[Verdict], str]:
        """:meth:`classify`, and the version of the policy that decided (a swap may land while it runs)."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        reason = self._not_serving()
        if reason is not None:
            raise NotReadyError(reason)
        started = time.perf_counter()
        policy = self.policy
        async with self.admission.admit():
            decisions, raw, scored = await self._decide(texts, deadline, policy)
        ids = [uuid.uuid4().hex for _ in texts]
        job = Escalation(ids, decisions, raw, texts, scored, self._audits(decisions))
        decisions = await self._escalate(job, policy, request_id, metadata, deadline)
        self._record(ids, decisions, raw, request_id, time.perf_counter() - started, scored)
        internal = scope == "internal"
        verdicts = [
            Verdict(
                id=vid,
                label=d.label,
                action=d.action,
                confidence=round(d.confidence, 2) if internal and d.confidence is not None else None,
            )
            for vid, d in zip(ids, decisions, strict=True)
        ]
        return verdicts, policy.version

    def _audits(self, decisions: list[Decision]) -> list[int]:
        """The confident decisions drawn for audit, each independently with probability ``audit_rate``."""
        rate = self.audit_rate
        if rate <= 0.0:
            return []
        return [i for i, d in enumerate(decisions) if d.reason == "confident" and self._draw.random() < rate]

    async def _scored(self, texts: list[str]) -> Scores:
        async with self.admission.scoring():
            return await self.backend.score(texts)

    def _scoring_deadline(self, deadline: float) -> float:
        """When scoring must stop: the request deadline less the outbox write's reserve."""
        timeout = self.settings.request_timeout_s
        return deadline - (min(WRITE_RESERVE_MAX_S, WRITE_RESERVE_FRACTION * timeout) if self.hooks else 0.0)

    async def _decide(
        self, texts: list[str], deadline: float, policy: ActivePolicy
    ) -> tuple[list[Decision], list[float | None], list[dict[str, Any] | None]]:
        """Decisions, the raw (uncalibrated) P(unsafe) of each text and what was scored (``serve.readings``:
        a long text is decided on its highest calibrated window); failures fail closed. InputTooLongError
        (an input needing more than ``max_windows`` windows) propagates: the request is refused with 413."""
        mode, fail = self.settings.mode, self.settings.fail_action
        n = len(texts)
        try:
            async with asyncio.timeout_at(self._scoring_deadline(deadline)):
                scores = await self._scored(texts)
            read = readings(scores, n, policy.calibrator)
        except InputTooLongError:
            raise  # refused whole (413), never decided on a part of it
        except TimeoutError:
            self.metrics.backend_errors.labels(kind="timeout").inc()
            self._failed()
            _log.warning(
                "backend did not answer within the request deadline (%g s); answering fail-closed",
                self.settings.request_timeout_s,
            )
            return [fail_closed("timeout", mode=mode, fail_action=fail)] * n, [None] * n, [None] * n
        except Exception as exc:  # any backend/calibration failure fails closed, never 5xx, never allow
            self.metrics.backend_errors.labels(kind="error").inc()
            self._failed()
            _log.warning("backend failed (%s); answering fail-closed", type(exc).__name__)
            # exception text can quote the input: with redact_input only its type is logged
            _audit.debug("backend failure %s", type(exc).__name__, exc_info=not self.settings.redact_input)
            return [fail_closed("backend_error", mode=mode, fail_action=fail)] * n, [None] * n, [None] * n
        self.failures_in_a_row = 0
        decisions = decide_batch(
            read.p_cal, read.decided, policy.thresholds, mode=mode, fail_action=fail, escalate=read.escalate
        )
        raw = [float(p) if d.p_unsafe is not None else None for p, d in zip(read.p_raw, decisions, strict=True)]
        return decisions, raw, read.scored

    async def _escalate(
        self,
        job: Escalation,
        policy: ActivePolicy,
        request_id: str | None,
        metadata: Mapping[str, str] | None,
        deadline: float,
    ) -> list[Decision]:
        """Write every escalation (and audit sample) to the outbox, by the request's deadline, before the
        request is answered.

        Returns the decisions to answer. An escalation that could not be stored is never answered
        ``escalate``: in enforce mode it gets the fail action ``block``, or, with the fail action
        ``escalate``, the request is refused (NotStoredError: 503). Shadow mode answers ``allow`` anyway.
        An audit sample that could not be stored is counted and dropped: the caller's answer stands.
        """
        decisions = job.decisions
        picked = [i for i, d in enumerate(decisions) if d.escalated]
        if not (picked or job.audits) or not self.hooks:
            return decisions
        context = {
            "request_id": request_id,
            "metadata": dict(metadata or {}),
            "mode": self.settings.mode,
            "thresholds": {k: v for k, v in policy.thresholds.to_dict().items() if k != "details"},
            "model": self.identity,
            "model_version": self.model_version,
            "policy_version": policy.version,
        }
        items = [job.payload(i, context, self.settings.redact_input) for i in picked]
        items += [job.payload(i, context, self.settings.redact_input, self.audit_rate) for i in job.audits]
        write = asyncio.ensure_future(self.outbox.enqueue(items, [h.name for h in self.hooks]))
        try:
            # shielded: a write that outlives the deadline still finishes (and is then delivered)
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(write)
        except Exception as exc:  # never answer "escalate" for what will not be delivered
            if not write.done():
                write.add_done_callback(self._late_write)
            self._count_audits(job, "not_stored")
            return self._not_stored(decisions, picked, exc) if picked else decisions
        self._count_audits(job, "stored")
        self.worker.wake()
        return decisions

    def _count_audits(self, job: Escalation, outcome: str) -> None:
        for i in job.audits:
            self.metrics.audit_samples.labels(label=job.decisions[i].label, outcome=outcome).inc()

    def _late_write(self, write: asyncio.Future[None]) -> None:
        if not write.cancelled() and write.exception() is None:
            _log.warning("escalations stored after their request was answered without them; they will be delivered")
            self.worker.wake()

    def _not_stored(self, decisions: list[Decision], picked: list[int], exc: BaseException) -> list[Decision]:
        for hook in self.hooks:
            self.metrics.hook_deliveries.labels(hook=hook.name, outcome="enqueue_failed").inc(len(picked))
        mode, fail = self.settings.mode, self.settings.fail_action
        _log.error(
            "could not store %d escalation(s) in the outbox by the request deadline (%s); %s",
            len(picked),
            type(exc).__name__,
            "answering allow (shadow mode)" if mode == "shadow" else f"fail action {fail}",
        )
        if mode == "shadow":
            return decisions
        if fail == "escalate":
            if isinstance(exc, OutboxFullError):  # its message names the cap and the fix
                raise OutboxFullError(f"{exc} (GUARDCAL_FAIL_ACTION=block answers block instead)") from None
            raise NotStoredError(
                "the escalation could not be stored by the request deadline, so no verdict is given; retry "
                "(GUARDCAL_FAIL_ACTION=block answers block instead)"
            )
        out = list(decisions)
        for i in picked:
            out[i] = fail_closed("not_stored", mode=mode, fail_action=fail)
        return out

    def _record(
        self,
        ids: list[str],
        decisions: list[Decision],
        raw: list[float | None],
        request_id: str | None,
        took: float,
        scored: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        m = self.metrics
        m.latency.observe(took)
        m.batch_size.observe(len(decisions))
        for i, (vid, d, p_raw) in enumerate(zip(ids, decisions, raw, strict=True)):
            what = (scored[i] if scored is not None else None) or {}
            m.requests.labels(action=d.policy_action, label=d.label).inc()
            if d.confidence is not None:
                m.confidence.observe(d.confidence)
            if d.escalated:
                m.escalations.labels(reason=d.reason).inc()
            _audit.debug(
                "verdict id=%s request_id=%s label=%s action=%s policy=%s reason=%s p_unsafe_raw=%s p_unsafe=%s "
                "input_tokens=%s windows=%s decisive_window=%s",
                vid, request_id, d.label, d.action, d.policy_action, d.reason, p_raw, d.p_unsafe,
                what.get("input_tokens"), what.get("windows"), what.get("decisive_window"),
            )  # fmt: skip
        counts = Counter(d.policy_action for d in decisions)
        _log.info(
            "classified request_id=%s n=%d allow=%d block=%d escalate=%d ms=%d",
            request_id, len(decisions), counts["allow"], counts["block"], counts["escalate"], int(took * 1000),
        )  # fmt: skip


@dataclass(frozen=True)
class Escalation:
    """One request's decisions and what the hooks are told about those escalated or audited."""

    ids: list[str]
    decisions: list[Decision]
    raw: list[float | None]
    texts: list[str]
    scored: Sequence[Mapping[str, Any] | None] | None
    audits: list[int]

    def payload(
        self, i: int, context: Mapping[str, Any], redact: bool, audit_probability: float | None = None
    ) -> tuple[str, dict[str, Any]]:
        body = escalation_payload(
            self.ids[i],
            self.decisions[i],
            text=self.texts[i],
            p_unsafe_raw=self.raw[i],
            context=context,
            redact=redact,
            scored=self.scored[i] if self.scored is not None else None,
            audit_probability=audit_probability,
        )
        return self.ids[i], body


def _readings(scores: Scores, n: int) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Raw P(unsafe) over the labels and the decided mask; BackendError for unusable scores."""
    if not isinstance(scores, Scores) or len(scores) != n:
        raise BackendError(f"backend returned {type(scores).__name__} for {n} input(s); expected Scores of length {n}")
    for arr in (scores.p_safe, scores.p_unsafe):
        if not np.all(np.isfinite(arr)) or np.any(arr < 0.0):
            raise BackendError("backend returned non-finite or negative probabilities")
    return np.asarray(scores.p_unsafe_norm, dtype=np.float64), np.asarray(scores.decided, dtype=bool)
