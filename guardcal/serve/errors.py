"""Exceptions of the serving layer.

    GuardcalError (guardcal.errors)
     └── ServeError
          ├── StartupError        the server refuses to start (incompatible bundle, broken hook plugin, ...)
          ├── NotReadyError       the backend is not (or no longer) ready: answered 503
          │    └── NotStoredError an escalation could not be stored by the deadline: 503
          │         └── OutboxFullError  the outbox is at its size cap (outbox_max_bytes)
          ├── OverloadedError     the request queue is full: answered 429 with Retry-After
          ├── BundleRefusedError  a bundle reload was refused (does not fit, unreadable): the old one stays
          └── HookDeliveryError   an escalation hook could not deliver: retried by the outbox

``guardcal.errors.BackendError`` (a backend failed or returned unusable scores) is answered
fail-closed. Messages say what is wrong and how to fix it, and never carry a score.
"""

from __future__ import annotations

from guardcal.errors import GuardcalError


class ServeError(GuardcalError):
    """Base class of the serving layer's errors."""


class StartupError(ServeError, RuntimeError):
    """The server cannot start with this backend, bundle or hook configuration."""


class NotReadyError(ServeError, RuntimeError):
    """The backend is still starting or already shutting down."""


class NotStoredError(NotReadyError):
    """An escalation could not be written to the outbox by the request's deadline (fail action escalate)."""


class OverloadedError(ServeError, RuntimeError):
    """Every slot of the bounded request queue is taken."""


class BundleRefusedError(ServeError, RuntimeError):
    """A new calibration bundle was not swapped in: unreadable, or it does not fit the running model."""


class HookDeliveryError(ServeError, RuntimeError):
    """An escalation hook failed to deliver a payload (the outbox retries it)."""


class OutboxFullError(NotStoredError):
    """The escalation outbox reached ``outbox_max_bytes``: the escalation was not stored.

    Answered like any escalation that could not be stored: the fail action ``block``, or 503
    when the fail action is ``escalate`` (what will never be delivered is not answered escalate).
    """
