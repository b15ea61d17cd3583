"""Escalation hooks: where low-confidence (and fail-closed escalated) inputs are sent.

A hook is anything with a ``name`` and ``async deliver(payload) -> None`` that raises when the
payload was not accepted. Hooks never run on the request path: the service writes each
escalation to the outbox (:mod:`guardcal.serve.outbox`) before answering, and the outbox worker
calls ``deliver`` until it succeeds. A failing hook never changes a decision.

Built-ins: ``log`` (always available) and ``webhook`` (when ``webhook_url`` is set). Plugins
register a factory ``factory(settings) -> EscalationHook`` under the entry-point group
``guardcal.hooks``, e.g. in a ``pyproject.toml``::

    [project.entry-points."guardcal.hooks"]
    pager = "mypkg.hooks:make_pager_hook"

Webhook receivers: the body is the payload as compact JSON with sorted keys, signed with
``X-Guardcal-Signature: sha256=<hex HMAC-SHA256 of the exact body>`` when a secret is set.
guardcal marks a delivery done only after a 2xx answer, so a receiver sees each escalation
once, except when guardcal stops between the 2xx and recording it: then the same body is sent
again after the restart. Receivers should therefore deduplicate on ``id``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from guardcal import __version__
from guardcal.serve.errors import HookDeliveryError, StartupError
from guardcal.serve.policy import Decision
from guardcal.serve.settings import ServeSettings

ENTRY_POINT_GROUP = "guardcal.hooks"
SIGNATURE_HEADER = "X-Guardcal-Signature"
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


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``body`` under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def escalation_payload(
    verdict_id: str,
    decision: Decision,
    *,
    text: str,
    p_unsafe_raw: float | None,
    context: Mapping[str, Any],
    redact: bool,
) -> dict[str, Any]:
    """The JSON document every hook receives for one escalation.

    ``context`` holds ``request_id``, ``metadata``, ``mode``, ``thresholds``, ``model``,
    ``model_version`` and ``policy_version``. Probabilities are plain floats (None when the
    decision failed closed); with ``redact`` the input is replaced by its sha256.
    """
    raw_conf = None if p_unsafe_raw is None else max(p_unsafe_raw, 1.0 - p_unsafe_raw)
    payload: dict[str, Any] = {
        "id": verdict_id,
        "label": decision.label,
        "action": decision.policy_action,
        "response_action": decision.action,
        "reason": decision.reason,
        "confidence": decision.confidence,
        "p_unsafe": decision.p_unsafe,
        "raw_confidence": raw_conf,
        "p_unsafe_raw": p_unsafe_raw,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "guardcal_version": __version__,
    }
    payload.update(context)
    if redact:
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
    """POSTs the payload as JSON; retries transport errors, 5xx, 408 and 429 with exponential back-off."""

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
        self._secret = secret
        self.retries = retries
        self.backoff_s = backoff_s
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._target = urlsplit(url).netloc

    async def deliver(self, payload: dict[str, Any]) -> None:
        body = canonical_json(payload)
        headers = {"Content-Type": "application/json", "User-Agent": f"guardcal/{__version__}"}
        headers["X-Guardcal-Escalation-Id"] = str(payload.get("id", ""))
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        problem = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
            if 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429):
                break
        raise HookDeliveryError(f"webhook {self._target} did not accept escalation {payload.get('id')}: {problem}")

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
    """The enabled hooks: ``settings.hooks`` by name, else log + webhook (if set) + every plugin."""
    builtins = _builtin_factories(settings)
    found = {ep.name: ep for ep in (plugins if plugins is not None else entry_points(group=ENTRY_POINT_GROUP))}
    if settings.hooks is None:
        wanted = [*builtins, *(n for n in found if n not in builtins)]
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
    return hooks
