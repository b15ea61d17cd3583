"""Shared helpers for the serve tests: fake scores, settings, a running app and a recording hook.

Everything runs on ``FakeBackend`` (no model); async tests use the anyio plugin on asyncio.
The suite imports in importlib mode, so test files reach these helpers through the ``kit``,
``make_settings`` and ``make_bundle`` fixtures rather than by importing this file.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from guardcal.backends.base import fake_identity
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import fixed_thresholds
from guardcal.core.confidence import Scores
from guardcal.serve import FakeBackend, ServeSettings
from guardcal.serve.settings import ServeSettings as _Settings

CLASSIFY_KEY = "classify-key-0123456789abcdef"
INTERNAL_KEY = "internal-key-0123456789abcdef"
KEYS = f"{CLASSIFY_KEY}:classify,{INTERNAL_KEY}:internal"

#: the fake model's raw P(unsafe) for known texts (anything else: 0.1)
TEXT_SCORES: dict[str, float] = {
    "hello there": 0.02,
    "how do I bake bread": 0.08,
    "I will hurt you": 0.97,
    "borderline joke": 0.62,
    "unclear request": 0.41,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GUARDCAL_* setting from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("GUARDCAL_") and name[9:].lower() in _Settings.model_fields:
            monkeypatch.delenv(name)
    monkeypatch.setenv("GUARDCAL_HOME", str(tmp_path / "home"))


def scores(*p_unsafe: float, mass: float = 1.0) -> Scores:
    """Scores whose renormalised P(unsafe) is each ``p_unsafe`` (``mass`` on the two labels)."""
    p = np.asarray(p_unsafe, dtype=np.float64)
    return Scores(p_safe=(1.0 - p) * mass, p_unsafe=p * mass)


def table_handler(table: Mapping[str, float] = TEXT_SCORES, default: float = 0.1) -> Callable[[list[str]], Scores]:
    def handler(texts: list[str]) -> Scores:
        return scores(*(table.get(t, default) for t in texts))

    return handler


def fake_backend(handler: Callable[[list[str]], Any] | None = None, **kwargs: Any) -> FakeBackend:
    return FakeBackend(handler or table_handler(), **kwargs)


def make_settings(tmp_path: Path, **overrides: Any) -> ServeSettings:
    """Settings for tests: no bundle, a private outbox, fast retries."""
    base: dict[str, Any] = {
        "bundle": None,
        "outbox": tmp_path / "outbox.sqlite3",
        "escalate_below": 0.9,
        "hook_retry_base_s": 0.02,
        "hook_retry_max_s": 0.1,
        "webhook_timeout_s": 2.0,
        "webhook_retries": 0,
        "request_timeout_s": 5.0,
    }
    base.update(overrides)
    return ServeSettings(**base)


def make_bundle(tmp_path: Path, *, a: float = 0.5, threshold: float = 0.8, **identity: Any) -> Path:
    """A Platt bundle (``a * logit``, shrinking confidences) for the fake backend's identity."""
    ident = {**fake_identity(), **identity}
    bundle = CalibrationBundle(
        method="platt",
        params={"prior_smoothing": True, "a_": a, "b_": 0.0},
        thresholds=fixed_thresholds(threshold).to_dict(),
        **ident,
    )
    return bundle.save(tmp_path / "bundle.json")


class RecordingHook:
    """A hook that records payloads and can fail its first ``fail_first`` deliveries."""

    def __init__(self, name: str = "recorder", fail_first: int = 0) -> None:
        self.name = name
        self.fail_first = fail_first
        self.attempts = 0
        self.payloads: list[dict[str, Any]] = []

    async def deliver(self, payload: dict[str, Any]) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise RuntimeError("receiver down")
        self.payloads.append(payload)


@contextlib.asynccontextmanager
async def running(app: FastAPI, client_host: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        async with client_for(app, client_host) as client:
            yield client


def client_for(app: FastAPI, client_host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://guardcal.test")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` on the event loop until it holds (fails the test after ``timeout_s``)."""
    import anyio

    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.fixture
def kit() -> types.SimpleNamespace:
    """The helpers above, for test modules."""
    return types.SimpleNamespace(
        scores=scores,
        table_handler=table_handler,
        backend=fake_backend,
        RecordingHook=RecordingHook,
        running=running,
        client_for=client_for,
        bearer=bearer,
        wait_for=wait_for,
        CLASSIFY_KEY=CLASSIFY_KEY,
        INTERNAL_KEY=INTERNAL_KEY,
        KEYS=KEYS,
        TEXT_SCORES=TEXT_SCORES,
    )


SKIP_BROWSER_ENV = "GUARDCAL_SKIP_BROWSER"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for Playwright (``executable_path``), or a failure naming the install commands.

    The review console is tested in a real headless browser in the default suite, so a machine without
    one fails (never skips) these tests; ``GUARDCAL_SKIP_BROWSER=1`` skips them knowingly.
    """
    import importlib.util
    import shutil

    if os.environ.get(SKIP_BROWSER_ENV) == "1":
        pytest.skip(f"{SKIP_BROWSER_ENV}=1: the review console's browser tests are skipped on purpose")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = []
    if path is None:
        missing.append("Chromium: sudo apt-get install -y chromium")
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright's Python API: pip install -c constraints/cpu.txt -e '.[test]' (no "
                       "`playwright install`: the tests drive Debian's Chromium)")  # fmt: skip
    if missing:
        pytest.fail(
            "the review console is tested in a real headless browser, and this machine lacks "
            + "; ".join(missing)
            + f" (.ci/run installs both; {SKIP_BROWSER_ENV}=1 skips the tests knowingly)",
            pytrace=False,
        )
    return str(path)


@pytest.fixture(name="make_settings")
def _make_settings_fixture(tmp_path: Path) -> Callable[..., ServeSettings]:
    return lambda **overrides: make_settings(tmp_path, **overrides)


@pytest.fixture(name="make_bundle")
def _make_bundle_fixture(tmp_path: Path) -> Callable[..., Path]:
    return lambda **kwargs: make_bundle(tmp_path, **kwargs)
