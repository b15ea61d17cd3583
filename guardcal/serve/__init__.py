"""``guardcal serve``: the HTTP inference server (FastAPI) around a :class:`ClassifierBackend`.

Modules: settings (ServeSettings), protocol (request/response bodies), policy (calibrated
P(unsafe) → label and action), service (GuardService, no FastAPI), hooks and outbox (durable
escalation delivery), metrics (Prometheus), deps/handlers/routes/app (HTTP). See app.py.

Names are re-exported lazily, so importing the service layer does not import FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardcal.backends.base import ClassifierBackend, FakeBackend
    from guardcal.serve.app import create_app, serve
    from guardcal.serve.settings import ServeSettings

_EXPORTS = {
    "create_app": "guardcal.serve.app",
    "serve": "guardcal.serve.app",
    "ClassifierBackend": "guardcal.backends.base",
    "FakeBackend": "guardcal.backends.base",
    "ServeSettings": "guardcal.serve.settings",
}
__all__ = ["ClassifierBackend", "FakeBackend", "ServeSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'guardcal.serve' has no attribute {name!r}")
