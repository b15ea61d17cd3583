"""``guardcal serve`` as a child process on 127.0.0.1, started and stopped the way an operator would.

Used by the end-to-end tests and the benchmarks: start the real server with flags and an
environment, wait until ``/readyz`` answers 200 (or fail with the server's own log), and stop it
with SIGTERM so it drains like a real deployment. A harness, not part of the installed package:
tests import it as ``benchmarks.server_process`` (pytest's pythonpath has the repo root), the
benchmark scripts as a sibling module.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServeProcess:
    """A running server: its process, port, log file and how long it took to become ready."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 60.0) -> str:
        """SIGTERM (a graceful drain), SIGKILL after ``timeout_s``; returns the whole log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.log()


def serve_command(*flags: str, python: str = sys.executable) -> list[str]:
    """The command line of ``guardcal serve`` with ``flags``, run by ``python``."""
    return [python, "-m", "guardcal.cli", "serve", *flags]


def start_serve(
    cmd: Sequence[str],
    port: int,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout_s: float = 600.0,
) -> ServeProcess:
    """Run ``cmd`` (a server listening on ``port``), its output to ``log_path``; wait for ``/readyz``.

    Raises RuntimeError with the server's log when it exits or is not ready in time.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, stdout=log,
                                stderr=subprocess.STDOUT, cwd=cwd)  # fmt: skip
    server = ServeProcess(proc, port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the server exited with {proc.returncode} before it was ready:\n{server.log()[-5000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.base_url + "/readyz", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server was not ready within {ready_timeout_s:.0f} s:\n{server.log()[-5000:]}")
        time.sleep(0.2)
    server.started_s = time.perf_counter() - t0
    return server
