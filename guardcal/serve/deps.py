"""Who may call what: API keys checked in ASGI middleware, before the request body is read.

:class:`AuthMiddleware` runs outside FastAPI's routing, so a request without a valid key (or
with a key whose scope does not cover the path) is refused from its headers alone: the server
never reads, decodes or validates the body of a caller it does not know. The caller it
admitted is left in the ASGI scope for the route dependencies (:func:`authenticate`).

Scopes: ``classify`` (``POST /classify``: label and action), ``internal`` (``/classify`` with the
calibrated confidence, ``/metrics`` and ``/admin/*``), ``metrics`` (``/metrics`` only, for Prometheus: it
cannot classify, so it never sees a per-request confidence) and ``review`` (the review queue, verdicts
and console; a review key is named, ``KEY:review@NAME``, and verdicts are recorded under that name).
``/healthz`` and ``/readyz`` (and ``/docs`` in dev) need no key. The review paths also take the key as
the password of HTTP Basic auth (any user name), so a browser can open the console: its 401 asks for
it. The review and admin paths always need a key, loopback callers included. Keys are compared as SHA-256 digests with
:func:`hmac.compare_digest` against every configured key (no early exit), and are never logged.
Without configured keys the server answers only loopback callers (scope ``classify``, plus
``/metrics``), unless ``insecure`` is set.
"""

from __future__ import annotations

import base64
import binascii
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
#: the review surface (console, its assets, queue and verdicts): review keys, Bearer or Basic
REVIEW_PATHS = frozenset(
    {"/review", "/review/app.js", "/review/app.css", "/reviews", "/reviews/queue", "/reviews/audit"}
)
ADMIN_PATHS = frozenset({"/admin/reload-bundle"})
PATH_SCOPES: dict[str, frozenset[Scope]] = {
    "/classify": frozenset({"classify", "internal"}),
    "/metrics": frozenset({"metrics", "internal"}),
    **{path: frozenset({"review"}) for path in REVIEW_PATHS},
    **{path: frozenset({"internal"}) for path in ADMIN_PATHS},
    "/reviews/audit": frozenset({"review", "internal"}),  # aggregate estimates only
}
#: the methods each guarded path serves: another method is left to routing (405), whatever the key's scope
PATH_METHODS: dict[str, frozenset[str]] = {
    "/classify": frozenset({"POST"}),
    "/metrics": frozenset({"GET"}),
    "/reviews": frozenset({"POST"}),
    "/admin/reload-bundle": frozenset({"POST"}),
}
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="guardcal review", charset="UTF-8"'}
CALLER_KEY = "guardcal.caller"


class KeyRing:
    """Configured API keys, held as digests, each with its scope (and name, ``KEY:SCOPE@NAME``)."""

    def __init__(self, keys: Mapping[str, Scope], names: Mapping[str, str | None] | None = None) -> None:
        self._entries = [
            (hashlib.sha256(k.encode()).digest(), scope, (names or {}).get(k)) for k, scope in keys.items()
        ]

    @classmethod
    def from_entries(cls, entries: Mapping[str, tuple[Scope, str | None]]) -> KeyRing:
        return cls({k: scope for k, (scope, _) in entries.items()}, {k: name for k, (_, name) in entries.items()})

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: str) -> tuple[Scope, str | None] | None:
        """The scope and name of ``presented``, or None; time does not depend on which key matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: tuple[Scope, str | None] | None = None
        for known, scope, name in self._entries:
            if hmac.compare_digest(known, digest):
                found = (scope, name)
        return found

    def scope_for(self, presented: str) -> Scope | None:
        """The scope of ``presented``, or None."""
        found = self.lookup(presented)
        return None if found is None else found[0]


@dataclass(frozen=True)
class Caller:
    scope: Scope
    authenticated: bool
    name: str | None = None
    basic: bool = False  # the key came as HTTP Basic auth (a browser): state changes need a same-origin JSON POST


def _presented_key(headers: Headers, path: str) -> tuple[str, bool]:
    """The key from ``Authorization`` (Bearer; Basic on the review paths) and whether it came as Basic."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip(), False
    if scheme.lower() == "basic" and path in REVIEW_PATHS:
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "", True
        return password, True
    return "", False


def identify(
    keyring: KeyRing, settings: ServeSettings, headers: Headers, client: str | None, path: str, method: str = "GET"
) -> Caller:
    """The caller of ``path`` from the request headers alone; ApiError 401/403 when refused."""
    keyed_path = path in REVIEW_PATHS or path in ADMIN_PATHS
    challenge = {**_CHALLENGE, **_BASIC_CHALLENGE} if path in REVIEW_PATHS else _CHALLENGE
    if not len(keyring):
        if keyed_path:
            scope = "review" if path in REVIEW_PATHS else "internal"
            raise ApiError(
                403, f"{path} needs an API key with the {scope!r} scope, and this server has none; set "
                f"GUARDCAL_API_KEYS (e.g. KEY:{scope}{'@NAME' if scope == 'review' else ''})",
            )  # fmt: skip
        if settings.insecure or is_loopback(client):
            return Caller("classify", authenticated=False)
        _log.warning("refused a non-local caller: no API keys are configured")
        raise ApiError(
            403, "this server has no API keys and serves local callers only; ask the operator for a key", _CHALLENGE
        )
    presented, basic = _presented_key(headers, path)
    if not presented.strip():
        _log.warning("refused a request without a bearer API key on %s", path)
        raise ApiError(401, "missing API key; send 'Authorization: Bearer <key>'", challenge)
    found = keyring.lookup(presented.strip())
    if found is None:
        _log.warning("refused a request with an unknown API key on %s", path)
        raise ApiError(401, "invalid API key", challenge)
    scope, name = found
    allowed = PATH_SCOPES.get(path)
    served = method.upper() in PATH_METHODS.get(path, frozenset({"GET"}))
    if allowed is not None and scope not in allowed and served:
        _log.warning("refused a %r key on %s", scope, path)
        raise ApiError(403, f"{path} needs an API key with the {' or '.join(repr(s) for s in sorted(allowed))} scope")
    return Caller(scope, authenticated=True, name=name, basic=basic)


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
            caller = identify(
                self.keyring, self.settings, Headers(scope=scope), host, scope["path"], scope.get("method", "GET")
            )
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
    state = request.app.state
    return identify(state.keyring, state.settings, request.headers, client, request.url.path, request.method)


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
