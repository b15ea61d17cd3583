"""Who may call what: API keys checked in ASGI middleware, before the request body is read.

:class:`AuthMiddleware` runs outside FastAPI's routing, so a request without a valid key (or
with a key whose scope does not cover the path) is refused from its headers alone: the server
never reads, decodes or validates the body of a caller it does not know. The caller it
admitted is left in the ASGI scope for the route dependencies (:func:`authenticate`).

Scopes: ``classify`` (``POST /classify``: label and action), ``internal`` (``/classify`` with the
calibrated confidence, and ``/metrics``) and ``metrics`` (``/metrics`` only, for Prometheus: it
cannot classify, so it never sees a per-request confidence). ``/healthz`` and ``/readyz`` (and
``/docs`` in dev) need no key. Keys are compared as SHA-256 digests with
:func:`hmac.compare_digest` against every configured key (no early exit), and are never logged.
Without configured keys the server answers only loopback callers (scope ``classify``, plus
``/metrics``), unless ``insecure`` is set.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from guardcal.serve.errors import NotReadyError
from guardcal.serve.handlers import ApiError, error_response
from guardcal.serve.metrics import ServeMetrics
from guardcal.serve.service import GuardService
from guardcal.serve.settings import Scope, ServeSettings, is_loopback

_log = logging.getLogger("guardcal.serve.auth")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: paths any caller may reach (probes; the docs only exist with ``dev``)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
#: scopes allowed on each guarded path; any other path needs a valid key of any scope (then 404/405)
PATH_SCOPES: dict[str, frozenset[Scope]] = {
    "/classify": frozenset({"classify", "internal"}),
    "/metrics": frozenset({"metrics", "internal"}),
}
CALLER_KEY = "guardcal.caller"


class KeyRing:
    """Configured API keys, held as digests, each with its scope."""

    def __init__(self, keys: Mapping[str, Scope]) -> None:
        self._entries = [(hashlib.sha256(k.encode()).digest(), scope) for k, scope in keys.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def scope_for(self, presented: str) -> Scope | None:
        """The scope of ``presented``, or None; time does not depend on which key matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: Scope | None = None
        for known, scope in self._entries:
            if hmac.compare_digest(known, digest):
                found = scope
        return found


@dataclass(frozen=True)
class Caller:
    scope: Scope
    authenticated: bool


def identify(keyring: KeyRing, settings: ServeSettings, headers: Headers, client: str | None, path: str) -> Caller:
    """The caller of ``path`` from the request headers alone; ApiError 401/403 when refused."""
    if not len(keyring):
        if settings.insecure or is_loopback(client):
            return Caller("classify", authenticated=False)
        _log.warning("refused a non-local caller: no API keys are configured")
        raise ApiError(
            403, "this server has no API keys and serves local callers only; ask the operator for a key", _CHALLENGE
        )
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        _log.warning("refused a request without a bearer API key on %s", path)
        raise ApiError(401, "missing API key; send 'Authorization: Bearer <key>'", _CHALLENGE)
    scope = keyring.scope_for(presented.strip())
    if scope is None:
        _log.warning("refused a request with an unknown API key on %s", path)
        raise ApiError(401, "invalid API key", _CHALLENGE)
    allowed = PATH_SCOPES.get(path)
    if allowed is not None and scope not in allowed:
        _log.warning("refused a %r key on %s", scope, path)
        raise ApiError(403, f"{path} needs an API key with the {' or '.join(repr(s) for s in sorted(allowed))} scope")
    return Caller(scope, authenticated=True)


class AuthMiddleware:
    """Refuse unauthenticated or out-of-scope HTTP requests before anything reads their body."""

    def __init__(self, app: ASGIApp, keyring: KeyRing, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.app, self.keyring, self.settings, self.metrics = app, keyring, settings, metrics

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else None
        try:
            caller = identify(self.keyring, self.settings, Headers(scope=scope), host, scope["path"])
        except ApiError as exc:
            self.metrics.rejected.labels(code=str(exc.status)).inc()
            # answered without calling receive(): the body is never read (uvicorn drops the connection's rest)
            await error_response(exc.status, exc.message, exc.headers)(scope, receive, send)
            return
        scope[CALLER_KEY] = caller
        await self.app(scope, receive, send)


def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def get_service(request: Request) -> GuardService:
    service: GuardService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReadyError("the classifier is starting; retry shortly")
    return service


def authenticate(request: Request) -> Caller:
    """The caller :class:`AuthMiddleware` admitted (checked again here if it did not run)."""
    caller = request.scope.get(CALLER_KEY)
    if isinstance(caller, Caller):
        return caller
    client = request.client.host if request.client else None
    return identify(request.app.state.keyring, request.app.state.settings, request.headers, client, request.url.path)


CallerDep = Annotated[Caller, Depends(authenticate)]
ServiceDep = Annotated[GuardService, Depends(get_service)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


def require_scope(request: Request, caller: Caller) -> None:
    """403 unless ``caller``'s scope covers this path (the middleware checked already; routes check again)."""
    allowed = PATH_SCOPES.get(request.url.path)
    if caller.authenticated and allowed is not None and caller.scope not in allowed:
        raise ApiError(403, f"{request.url.path} needs an API key with the {' or '.join(sorted(allowed))} scope")


def require_metrics(request: Request, caller: CallerDep) -> Caller:
    """The ``metrics`` or ``internal`` scope when keys are configured; without keys, whoever the server serves."""
    keyring: KeyRing = request.app.state.keyring
    if len(keyring) and caller.scope not in PATH_SCOPES["/metrics"]:
        raise ApiError(403, "/metrics needs an API key with the 'internal' or 'metrics' scope")
    return caller
