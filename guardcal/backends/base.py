"""The cut-off between the server and a model: :class:`ClassifierBackend`.

A backend renders the prompt for each input text itself, runs the model and returns the
decision-token readings as :class:`~guardcal.core.confidence.Scores` (one entry per text, in
order). Everything after that (calibration, policy, escalation) is the server's job, so a backend
never sees thresholds and the server never sees prompts or logits.

:class:`FakeBackend` is the test double (in the spirit of ``httpx.MockTransport``): it answers
``score`` with a handler function, so server tests need no model.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from guardcal.core.confidence import Scores
from guardcal.core.prompt import PromptTemplate
from guardcal.errors import BackendError

#: The keys of :meth:`ClassifierBackend.identity`, as taken by ``CalibrationBundle.check_compatible``.
IDENTITY_KEYS = ("model_id", "adapter_hash", "mode", "prompt_fingerprint", "label_spec")
#: keys a backend may add: ``prompt_profile`` (the profile's ``describe()``) lets a refused bundle name the
#: profile field that differs
OPTIONAL_IDENTITY_KEYS = ("prompt_profile",)

Handler = Callable[[list[str]], Scores | Awaitable[Scores]]


class ClassifierBackend(ABC):
    """Scores texts with a guard model; subclasses set ``ready`` once they can score."""

    name: str = "backend"
    ready: bool = False

    async def start(self) -> None:
        """Load the model; set ``ready`` when ``score`` can be called."""
        self.ready = True

    async def aclose(self) -> None:
        """Release the model; ``ready`` becomes False."""
        self.ready = False

    def alive(self) -> bool:
        """False once the worker that runs the model has stopped for good (the server then reports
        itself unready and unhealthy); backends without a worker of their own stay alive."""
        return True

    @abstractmethod
    async def score(self, texts: list[Any]) -> Scores:
        """Decision-token readings for ``texts`` (one entry per text or ``Conversation``, same order)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """``model_id``, ``adapter_hash``, ``mode``, ``prompt_fingerprint``, ``label_spec`` of the running model."""


def check_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``identity`` as a dict with exactly :data:`IDENTITY_KEYS`; raise BackendError otherwise."""
    missing = [k for k in IDENTITY_KEYS if k not in identity]
    unknown = sorted(set(identity) - set(IDENTITY_KEYS) - set(OPTIONAL_IDENTITY_KEYS))
    if missing or unknown:
        raise BackendError(
            f"backend identity() must return exactly {list(IDENTITY_KEYS)} "
            f"(optionally {list(OPTIONAL_IDENTITY_KEYS)}); missing {missing}, unknown {unknown}; fix the backend "
            "so the server can check it against the calibration bundle"
        )
    return {k: identity[k] for k in (*IDENTITY_KEYS, *OPTIONAL_IDENTITY_KEYS) if k in identity}


def fake_identity(mode: str = "direct", model_id: str = "fake") -> dict[str, Any]:
    """The identity :class:`FakeBackend` reports by default (prompt fingerprint of the real template)."""
    return {
        "model_id": model_id,
        "adapter_hash": None,
        "mode": mode,
        "prompt_fingerprint": PromptTemplate(mode).fingerprint(),  # type: ignore[arg-type]
        "label_spec": {"labels": ["safe", "unsafe"], "surfaces": ["Safe", "Unsafe"], "token_ids": [[1], [2]]},
    }


class FakeBackend(ClassifierBackend):
    """A backend whose ``score`` is ``handler(texts)`` (sync or async; it may raise)."""

    name = "fake"

    def __init__(self, handler: Handler, *, identity: Mapping[str, Any] | None = None) -> None:
        self.handler = handler
        self._identity = check_identity(identity if identity is not None else fake_identity())
        self.calls: list[list[str]] = []

    async def score(self, texts: list[str]) -> Scores:
        if not self.ready:
            raise BackendError("FakeBackend.score called before start(); start the backend first")
        self.calls.append(list(texts))
        result = self.handler(list(texts))
        if inspect.isawaitable(result):
            result = await result
        return result

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)
