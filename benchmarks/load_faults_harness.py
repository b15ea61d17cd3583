"""Shared pieces of the reliability benchmark (``load_faults.py``): the API keys and the webhook secret
every scenario's server runs with, and the server processes themselves (settings as GUARDCAL_*
variables, start and wait for ``/readyz``, stop; the server's RSS sampled in a thread)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

try:
    from .server_process import ServeProcess, free_port, serve_command, start_serve
except ImportError:  # run as a script: python benchmarks/NAME.py
    from server_process import ServeProcess, free_port, serve_command, start_serve  # type: ignore[no-redef]

CLASSIFY_KEY = "load-classify-key-0123456789abcdef"
INTERNAL_KEY = "load-internal-key-0123456789abcdef"
KEYS = f"{CLASSIFY_KEY}:classify,{INTERNAL_KEY}:internal"
WEBHOOK_SECRET = "whsec_bG9hZC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5YWI="  # Standard Webhooks format, 32 bytes
#: the script whose ``serve-fake`` entry serves guardcal's app over the fake backend
SCRIPT = Path(__file__).resolve().with_name("load_faults.py")


# --- server processes ----------------------------------------------------------------------


def server_env(settings: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server process: ``settings`` as GUARDCAL_* variables, then ``extra``
    (e.g. FAKE_* switches, or GUARDCAL_HOME where the default model is materialised)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUARDCAL_", "FAKE_"))}
    if "GUARDCAL_HOME" in os.environ:
        env["GUARDCAL_HOME"] = os.environ["GUARDCAL_HOME"]
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
    for name, value in settings.items():
        if value is not None:
            env["GUARDCAL_" + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(extra or {})
    return env


def start_server(
    kind: str,
    workdir: Path,
    settings: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_timeout_s: float = 900.0,
    name: str = "server",
) -> ServeProcess:
    """Start ``kind`` ("fake" or "transformers") and wait for ``/readyz`` 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # a fixed threshold instead of a bundle: none fits the fake model, and for the real one this pins the
    # base model in direct mode (the shipped bundle would bring its own adapter and mode)
    settings = {"bundle": "none", "escalate_below": 0.9, **settings}
    if kind == "fake":
        cmd = [sys.executable, str(SCRIPT), "serve-fake"]
    elif kind == "transformers":
        cmd = serve_command("--backend", "transformers")
    else:
        raise ValueError(f"unknown server kind {kind!r}; use 'fake' or 'transformers'")
    environ = server_env({"host": "127.0.0.1", "port": port, **settings}, env)
    try:
        return start_serve(
            cmd, port, workdir / f"{name}-{port}.log", env=environ, cwd=workdir, ready_timeout_s=ready_timeout_s
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{kind} server: {exc}") from None


@contextlib.contextmanager
def running_server(kind: str, workdir: Path, settings: Mapping[str, Any], **kw: Any) -> Iterator[ServeProcess]:
    server = start_server(kind, workdir, settings, **kw)
    try:
        yield server
    finally:
        server.stop()


class RssSampler:
    """Samples a process's resident memory every ``every_s`` seconds in a thread."""

    def __init__(self, server: ServeProcess, every_s: float = 0.2) -> None:
        self.server, self.every_s = server, every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(self.server.rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
