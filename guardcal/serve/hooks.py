"""Escalation hooks: where low-confidence (and fail-closed escalated) inputs are sent.

A hook is anything with a ``name`` and ``async deliver(payload) -> None`` that raises when the
payload was not accepted. Hooks never run on the request path: the service writes each
escalation to the outbox (:mod:`guardcal.serve.outbox`) before answering, and the outbox worker
calls ``deliver`` (each call bounded by ``hook_timeout_s``) until it succeeds. A failing hook
never changes a decision.

Built-ins: ``log`` (always available) and ``webhook`` (when ``webhook_url`` is set). Plugins
register a factory ``factory(settings) -> EscalationHook`` under the entry-point group
``guardcal.hooks``, e.g. in a ``pyproject.toml``::

    [project.entry-points."guardcal.hooks"]
    pager = "mypkg.hooks:make_pager_hook"

A plugin receives every escalation, raw input included, so an installed plugin is loaded only
when its name is listed in ``hooks`` (``GUARDCAL_HOOKS=log,webhook,pager``); installing a
package is not enough.

Webhook receivers: the body is the payload as compact JSON with sorted keys, signed in the
Standard Webhooks convention (:mod:`guardcal.serve.signing`: ``webhook-id`` = the escalation
``id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``) when a secret is
set. Delivery is **at-least-once**: guardcal marks a delivery done only after a 2xx answer, so
the same escalation can arrive more than once (a POST whose 2xx was lost to a read timeout is
sent again, and so is one answered just before guardcal stopped). Receivers deduplicate on
``webhook-id`` (equal to the payload's ``id``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from guardcal import __version__
from guardcal.core.conversation import Conversation
from guardcal.serve.errors import HookDeliveryError, StartupError
from guardcal.serve.policy import Decision
from guardcal.serve.settings import ServeSettings
from guardcal.serve.signing import parse_secret, signed_headers

ENTRY_POINT_GROUP = "guardcal.hooks"
#: what an escalation payload says was scored (``escalation_payload``'s ``scored``)
SCORED_KEYS = ("input_tokens", "windows", "decisive_window", "window_p_unsafe_raw")
_log = logging.getLogger("guardcal.serve.hooks")
_audit = logging.getLogger("guardcal.audit")


@runtime_checkable
class EscalationHook(Protocol):
    """Receives escalation payloads; ``deliver`` raises if the payload was not accepted."""

    name: str

    async def deliver(self, payload: dict[str, Any]) -> None: ...


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, sorted keys, UTF-8, no NaN."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def escalation_payload(
    verdict_id: str,
    decision: Decision,
    *,
    text: str | Conversation,
    p_unsafe_raw: float | None,
    context: Mapping[str, Any],
    redact: bool,
    scored: Mapping[str, Any] | None = None,
    audit_probability: float | None = None,
) -> dict[str, Any]:
    """The JSON document every hook receives for one escalation.

    ``context`` holds ``request_id``, ``metadata``, ``mode``, ``thresholds``, ``model``,
    ``model_version`` and ``policy_version``. Probabilities are plain floats (None when the
    decision failed closed); with ``redact`` the input is replaced by its sha256. A conversation
    (``messages`` request) is carried as ``messages`` (the turns up to the judged one, which is last)
    and ``judged_role``; redacted, as ``messages_sha256`` (``Conversation.sha256``) and ``judged_role``.
    ``scored`` says what the model read (``serve.readings``): ``input_tokens``, ``windows`` (how
    many windows the input was scored as, every one of them), ``decisive_window`` (the one whose
    calibrated P(unsafe) decided, 0-based) and ``window_p_unsafe_raw`` (each window's raw P(unsafe));
    all None when nothing was scored (failed closed) or the backend did not say.
    ``audit_probability`` marks an audit sample: a confident decision (``action`` allow or block, as
    answered) drawn for review with that probability; its ``reason`` is ``audit``. Every payload says
    ``sampling_probability``: 1 for an escalation, the audit rate for an audit sample.
    """
    raw_conf = None if p_unsafe_raw is None else max(p_unsafe_raw, 1.0 - p_unsafe_raw)
    payload: dict[str, Any] = {
        "id": verdict_id,
        "label": decision.label,
        "action": decision.policy_action,
        "response_action": decision.action,
        "reason": decision.reason if audit_probability is None else "audit",
        "sampling_probability": 1.0 if audit_probability is None else audit_probability,
        "confidence": decision.confidence,
        "p_unsafe": decision.p_unsafe,
        "raw_confidence": raw_conf,
        "p_unsafe_raw": p_unsafe_raw,
        **{key: (scored or {}).get(key) for key in SCORED_KEYS},
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "guardcal_version": __version__,
    }
    payload.update(context)
    if isinstance(text, Conversation):
        payload["judged_role"] = text.judged.role
        if redact:
            payload["messages_sha256"] = text.sha256()
        else:
            payload["messages"] = text.to_messages()
    elif redact:
        payload["input_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    else:
        payload["input"] = text
    return payload


class LogHook:
    """Logs one score-free INFO line per escalation; the full payload goes to ``guardcal.audit`` at DEBUG."""

    name = "log"

    async def deliver(self, payload: dict[str, Any]) -> None:
        _log.info(
            "escalation id=%s request_id=%s label=%s reason=%s",
            payload.get("id"),
            payload.get("request_id"),
            payload.get("label"),
            payload.get("reason"),
        )
        _audit.debug("escalation payload %s", canonical_json(payload).decode())


class WebhookHook:
    """POSTs the payload as JSON; retries transport errors, 5xx, 408, 425 and 429 with exponential back-off.

    ``secret`` is a Standard Webhooks secret (``whsec_<base64>``); each attempt is signed with its
    own ``webhook-timestamp``, so a retry is not refused by the receiver's replay window.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self._key = parse_secret(secret) if secret else None
        self.retries = retries
        self.backoff_s = backoff_s
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._target = urlsplit(url).netloc

    def _headers(self, escalation_id: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"guardcal/{__version__}"}
        if self._key is not None:
            headers.update(signed_headers(escalation_id, body, self._key))
        else:
            headers["webhook-id"] = escalation_id
        return headers

    async def deliver(self, payload: dict[str, Any]) -> None:
        body = canonical_json(payload)
        escalation_id = str(payload.get("id", ""))
        problem = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client.post(self.url, content=body, headers=self._headers(escalation_id, body))
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
            if 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429):
                break
        raise HookDeliveryError(f"webhook {self._target} did not accept escalation {escalation_id}: {problem}")

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


def _builtin_factories(settings: ServeSettings) -> dict[str, Callable[[], EscalationHook]]:
    factories: dict[str, Callable[[], EscalationHook]] = {"log": LogHook}
    if settings.webhook_url:
        url = settings.webhook_url
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        if not secret:
            _log.warning("webhook without GUARDCAL_WEBHOOK_SECRET: the receiver cannot verify who sent escalations")
        else:
            try:
                parse_secret(secret)
            except ValueError as exc:
                raise StartupError(f"webhook_secret: {exc}") from None
        factories["webhook"] = lambda: WebhookHook(
            url,
            secret=secret,
            timeout_s=settings.webhook_timeout_s,
            retries=settings.webhook_retries,
            backoff_s=settings.hook_retry_base_s,
        )
    return factories


def _plugin(ep: EntryPoint, settings: ServeSettings) -> EscalationHook:
    try:
        hook = ep.load()(settings)
    except Exception as exc:
        raise StartupError(
            f"escalation hook plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}; "
            "fix or uninstall the plugin, or leave it out of GUARDCAL_HOOKS"
        ) from exc
    if not isinstance(hook, EscalationHook):
        raise StartupError(f"hook plugin {ep.name!r} returned {type(hook).__name__}, not a name + async deliver()")
    return hook


def load_hooks(settings: ServeSettings, plugins: list[EntryPoint] | None = None) -> list[EscalationHook]:
    """The enabled hooks: the names in ``settings.hooks``, else log + webhook (if set).

    A plugin (an entry point in ``guardcal.hooks``) is imported and built only when ``hooks``
    names it: it would receive every escalation, raw input included.
    """
    builtins = _builtin_factories(settings)
    found = {ep.name: ep for ep in (plugins if plugins is not None else entry_points(group=ENTRY_POINT_GROUP))}
    if settings.hooks is None:
        wanted = list(builtins)
    else:
        wanted = [n.strip() for n in settings.hooks.split(",") if n.strip()]
    hooks: list[EscalationHook] = []
    for name in wanted:
        if name in builtins:
            hooks.append(builtins[name]())
        elif name in found:
            hooks.append(_plugin(found[name], settings))
        else:
            hint = " (set GUARDCAL_WEBHOOK_URL)" if name == "webhook" else ""
            known = sorted({*builtins, *found})
            raise StartupError(f"escalation hook {name!r} is not available{hint}; available hooks: {known}")
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise StartupError(f"escalation hook names must be unique, got {names}; rename or disable a plugin")
    idle = sorted(n for n in found if n not in wanted and n not in builtins)
    if idle:
        _log.info("hook plugins installed but not enabled (name them in GUARDCAL_HOOKS to load them): %s", idle)
    return hooks
