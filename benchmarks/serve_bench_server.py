"""serve_bench's servers (benchmarks/serve_bench.py): whether a backend can run, ``guardcal serve`` as
a child process with its peak RSS sampled, and the load levels driven at it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

try:
    from .serve_bench_config import LONG_CONCURRENCY, SERVER_FLAGS, VARIANTS
    from .server_process import free_port, serve_command
except ImportError:  # run as a script: python benchmarks/NAME.py
    from serve_bench_config import LONG_CONCURRENCY, SERVER_FLAGS, VARIANTS  # type: ignore[no-redef]
    from server_process import free_port, serve_command  # type: ignore[no-redef]


def backend_available(backend: str, python: str) -> str | None:
    """None when ``python`` can run ``backend`` (a VARIANTS name); otherwise why not."""
    if backend not in VARIANTS:
        return f"unknown backend {backend!r}; use one of {sorted(VARIANTS)}"
    if backend == "transformers-compile":
        from guardcal.backends.compiled import cxx_compiler

        return None if cxx_compiler() else "no C++ compiler for torch.compile (apt-get install g++)"
    if backend == "transformers":
        return None
    code = "import vllm, guardcal.backends.vllm_backend"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot run: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error text"])[-1]
        return f"`{code}` failed in {python}: {last}"
    return None


class Server:
    """``guardcal serve`` as a child process, its output in a file, its peak RSS sampled."""

    def __init__(self, python: str, backend: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{backend}.log"
        # the base model in direct mode with a fixed threshold: the shipped bundle would bring its adapter and mode
        outbox = str(workdir / f"outbox-{backend}.sqlite3")
        flags = [*VARIANTS[backend], "--port", str(self.port), "--bundle", "none", "--escalate-below", "0.9"]
        cmd = serve_command(*flags, "--outbox", outbox, *SERVER_FLAGS, python=python)
        self.cmd = cmd
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        self._log = self.log_path.open("w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                rss = 0
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(0.2)

    def wait_ready(self, timeout_s: float) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        return httpx.get(self.base + "/metrics", timeout=30).text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stop.set()
        self._sampler.join()
        self._log.close()


async def drive(base: str, texts: Sequence[str], concurrency: int) -> dict[str, Any]:
    """POST each text once with ``concurrency`` requests in flight; throughput and latency."""
    latencies: list[float] = []
    errors: list[str] = []
    queue: Iterator[str] = iter(texts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def worker() -> None:
            for text in queue:
                t = time.perf_counter()
                r = await client.post("/classify", json={"input": text})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or r.json().get("action") not in ("allow", "block", "escalate"):
                    errors.append(f"HTTP {r.status_code}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    return {
        "n": len(ms),
        "rps": len(ms) / wall,
        "p50_ms": _pct(ms, 50),
        "p95_ms": _pct(ms, 95),
        "p99_ms": _pct(ms, 99),
        "errors": len(errors),
    }


def _pct(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, min(len(sorted_ms), round(q / 100 * len(sorted_ms) + 0.5)))
    return float(sorted_ms[rank - 1])


def bench_backend(
    backend: str,
    python: str,
    levels: dict[int, tuple[list[str], list[str]]],
    workdir: Path,
    long_level: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    server = Server(python, backend, workdir)
    try:
        startup = server.wait_ready(900)
        out: dict[str, Any] = {"startup_s": startup, "command": " ".join(server.cmd[1:])}
        for c, (warm_up, timed) in levels.items():
            asyncio.run(drive(server.base, warm_up, c))  # not counted
            out[f"c{c}"] = asyncio.run(drive(server.base, timed, c))
            print(f"  {backend} c{c}: {json.dumps(out[f'c{c}'])}", flush=True)
        if long_level is not None:  # long inputs, scored whole as windows
            warm_up, timed = long_level
            asyncio.run(drive(server.base, warm_up, LONG_CONCURRENCY))  # not counted
            out["long"] = {"concurrency": LONG_CONCURRENCY, **asyncio.run(drive(server.base, timed, LONG_CONCURRENCY))}
            print(f"  {backend} long: {json.dumps(out['long'])}", flush=True)
        text = server.metrics()
        out["backend_errors"] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("guardcal_backend_errors_total")
        )
        log = server.log_path.read_text(errors="replace").splitlines()
        out["server_log_summary"] = [x for x in log if "backend:" in x or "guardcal serving" in x]
    finally:
        server.stop()
    out["peak_rss_mb"] = server.peak_rss / 2**20
    return out
