"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: $GUARDCAL_DATA_DIR, else ../shared/data next to the repo."""
    env = os.environ.get("GUARDCAL_DATA_DIR")
    path = Path(env) if env else Path(__file__).parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(
            f"data directory {path} not found: set GUARDCAL_DATA_DIR to the shared "
            "data folder (the one holding openai_moderation/ and xstest/)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session", autouse=True)
def _offline() -> None:
    """Nothing in the suite may reach a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # subprocesses (benchmarks, CLIs) find the shared data as the tests do, whatever test ran first
    shared = Path(__file__).parents[1].parent / "shared" / "data"
    if shared.is_dir():
        os.environ.setdefault("GUARDCAL_DATA_DIR", str(shared))


@pytest.fixture(autouse=True)
def _guardcal_log_level_unset():  # type: ignore[no-untyped-def]
    """Each test starts with the ``guardcal`` logger's level unset, as the library leaves it. The CLI pins it
    at INFO (``configure_logging``), and tests run the CLI in-process, some in module-scoped fixtures that
    run before any function-scoped one: left pinned, a later test's ``caplog.set_level(DEBUG)`` would miss
    ``guardcal.audit``'s DEBUG records (the last CI runs: three and four audit-log tests failed so)."""
    logging.getLogger("guardcal").setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def default_model():  # type: ignore[no-untyped-def]
    """The real embedded default model (SmolLM2-135M-Instruct), loaded once."""
    from guardcal.models.loading import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def tokenizer(default_model):  # type: ignore[no-untyped-def]
    return default_model.tokenizer


@pytest.fixture(scope="session")
def launch_serve():  # type: ignore[no-untyped-def]
    """Start a real ``guardcal serve`` on a free 127.0.0.1 port, its outbox and log in ``workdir``.

    ``keys`` become GUARDCAL_API_KEYS, ``env`` is added to the environment and the names in
    ``drop`` removed from it; a server that does not become ready fails the test with its log.
    """
    from benchmarks.server_process import free_port, serve_command, start_serve

    def launch(workdir: Path, *flags: str, keys: str, env=None, drop=(), ready_timeout_s=600.0):  # type: ignore[no-untyped-def]
        port = free_port()
        environ = {**os.environ, "GUARDCAL_API_KEYS": keys, "HF_HUB_OFFLINE": "1", **(env or {})}
        for name in drop:
            environ.pop(name, None)
        cmd = serve_command("--port", str(port), "--outbox", str(workdir / "outbox.db"), *flags)
        try:
            return start_serve(cmd, port, workdir / "server.log", env=environ, ready_timeout_s=ready_timeout_s)
        except RuntimeError as exc:
            pytest.fail(str(exc))

    return launch
