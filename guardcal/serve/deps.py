"""Request dependencies: the service, the settings and the caller (API key → scope).

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest` against every configured
key (no early exit), and are never logged. Without configured keys the server answers only
loopback callers (scope ``classify``), unless ``insecure`` is set.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from guardcal.serve.errors import NotReadyError
from guardcal.serve.handlers import ApiError
from guardcal.serve.service import GuardService
from guardcal.serve.settings import Scope, ServeSettings, is_loopback

_log = logging.getLogger("guardcal.serve.auth")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


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


def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def get_service(request: Request) -> GuardService:
    service: GuardService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReadyError("the classifier is starting; retry shortly")
    return service


def authenticate(request: Request) -> Caller:
    """The caller's scope from ``Authorization: Bearer <key>``; 401/403 otherwise."""
    keyring: KeyRing = request.app.state.keyring
    settings: ServeSettings = request.app.state.settings
    client = request.client.host if request.client else None
    if not len(keyring):
        if settings.insecure or is_loopback(client):
            return Caller("classify", authenticated=False)
        _log.warning("refused a non-local caller: no API keys are configured")
        raise ApiError(
            403, "this server has no API keys and serves local callers only; ask the operator for a key", _CHALLENGE
        )
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        _log.warning("refused a request without a bearer API key on %s", request.url.path)
        raise ApiError(401, "missing API key; send 'Authorization: Bearer <key>'", _CHALLENGE)
    scope = keyring.scope_for(presented.strip())
    if scope is None:
        _log.warning("refused a request with an unknown API key on %s", request.url.path)
        raise ApiError(401, "invalid API key", _CHALLENGE)
    return Caller(scope, authenticated=True)


CallerDep = Annotated[Caller, Depends(authenticate)]
ServiceDep = Annotated[GuardService, Depends(get_service)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


def require_internal(request: Request, caller: CallerDep) -> Caller:
    """Internal scope when keys are configured; without keys, whoever the server serves."""
    keyring: KeyRing = request.app.state.keyring
    if len(keyring) and caller.scope != "internal":
        raise ApiError(403, "this endpoint needs an API key with the 'internal' scope")
    return caller
