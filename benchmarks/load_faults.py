"""Reliability of ``guardcal serve``, measured on 127.0.0.1: load, webhook faults, SIGKILL, SIGTERM.

Every scenario runs the server as a real process (uvicorn, the real app from
``guardcal.serve.create_app``): either ``python -m guardcal.cli serve`` with the real
transformers backend and the default model, or this file's ``serve-fake`` entry, which
serves the same app over a deterministic ``FakeBackend`` (the HTTP layer without a model).
Escalations go to a real webhook receiver (uvicorn, in this process) that can be down,
slow or answering 500; "count in" is the escalations the server answered, "count out"
what the receiver accepted (2xx).

    python benchmarks/load_faults.py                    # writes benchmarks/results/reliability.json
    python benchmarks/load_faults.py --quick --skip-transformers
    python benchmarks/load_faults.py serve-fake         # the fake-backend server, settings from GUARDCAL_*

The tests (tests/serve/test_load.py, test_faults.py) call these functions with small sizes.

The code is split by concern into sibling modules, each usable as ``benchmarks.NAME`` and as a
plain module when this file runs as a script: ``load_faults_harness`` (keys, server processes),
``load_faults_backend`` (the fake backend, backend faults), ``load_faults_receiver`` (the webhook
receiver), ``load_faults_client`` (the load driver), ``load_faults_overload`` (load and memory
soak), ``load_faults_webhook`` (webhook faults) and ``load_faults_process`` (SIGKILL, SIGTERM).
This file runs the scenarios and re-exports what the tests call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from .load_faults_backend import backend_fault_scenario, serve_fake
    from .load_faults_harness import CLASSIFY_KEY, KEYS, running_server
    from .load_faults_overload import load_scenario, memory_soak_scenario
    from .load_faults_process import kill_restart_scenario, sigterm_scenario
    from .load_faults_webhook import webhook_fault_scenario
except ImportError:  # run as a script: python benchmarks/NAME.py
    from load_faults_backend import backend_fault_scenario, serve_fake  # type: ignore[no-redef]
    from load_faults_harness import CLASSIFY_KEY, KEYS, running_server  # type: ignore[no-redef]
    from load_faults_overload import load_scenario, memory_soak_scenario  # type: ignore[no-redef]
    from load_faults_process import kill_restart_scenario, sigterm_scenario  # type: ignore[no-redef]
    from load_faults_webhook import webhook_fault_scenario  # type: ignore[no-redef]

__all__ = [
    "CLASSIFY_KEY",
    "KEYS",
    "RESULTS",
    "backend_fault_scenario",
    "kill_restart_scenario",
    "load_scenario",
    "machine",
    "main",
    "memory_soak_scenario",
    "running_server",
    "serve_fake",
    "sigterm_scenario",
    "webhook_fault_scenario",
]

RESULTS = Path(__file__).parent / "results" / "reliability.json"


# --- the script ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_average_1m_5m_at_start": [round(load1, 2), round(load5, 2)],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve-fake":
        serve_fake()
        return 0
    import tempfile

    from guardcal import __version__

    q = args.quick
    work = args.workdir or Path(tempfile.mkdtemp(prefix="guardcal-reliability-"))
    report: dict[str, Any] = {"guardcal_version": __version__, "machine": machine(), "quick": q}
    started = time.time()
    steps = fake_steps(work, q)
    if not args.skip_transformers:
        steps += transformers_steps(work, q)
    if args.only:
        steps = only_steps(parser, args.only, steps)
        report = earlier_report(args.output, args.only, report)
    run_steps(steps, report)
    write_report(args, report, started, work)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=("measure", "serve-fake"), default="measure")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, help="server logs and outbox files (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="test sizes")
    parser.add_argument("--skip-transformers", action="store_true", help="fake backend only (no model)")
    parser.add_argument("--only", help="comma list of scenarios to (re)run; the others are kept from --output")
    return parser


def fake_steps(work: Path, q: bool) -> list[tuple[str, Any]]:
    """The scenarios over the fake backend, in run order (``q``: test sizes)."""
    return [
        (
            "load_fake",
            lambda: load_scenario(
                "fake",
                work,
                n=1000 if q else 10_000,
                warmup=200,
                settings={"queue_size": 32, "max_concurrency": 4},
                env={"FAKE_DELAY_MS": "5"},
                retry_after_scale=0.01,
            ),
        ),
        ("webhook_faults_fake", lambda: webhook_fault_scenario("fake", work, n_per_phase=30 if q else 200)),
        ("kill_restart_fake", lambda: kill_restart_scenario("fake", work, n_before=30 if q else 300, n_after=20)),
        ("sigterm_kept_fake", lambda: sigterm_scenario("fake", work, in_flight=8)),
        ("sigterm_flushed_fake", lambda: sigterm_scenario("fake", work, in_flight=8, flush=True)),
        ("backend_faults_fake", lambda: backend_fault_scenario("fake", work)),
    ]


def transformers_steps(work: Path, q: bool) -> list[tuple[str, Any]]:
    """The scenarios over the transformers backend and the default model, in run order (``q``: test sizes)."""
    return [
        (
            "memory_soak_transformers",
            lambda: memory_soak_scenario("transformers", work, rounds=4 if q else 8, per_round=25 if q else 100),
        ),
        (
            "load_kill_restart_transformers",
            lambda: kill_restart_scenario(
                "transformers",
                work,
                n_before=200 if q else 500,
                n_after=4,
                concurrency=64,
                warmup=64,
                retry_after_scale=0.2,
                settings={"queue_size": 8, "max_concurrency": 4, "max_request_batch": 8},
            ),
        ),
    ]


def only_steps(parser: argparse.ArgumentParser, only: str, steps: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The steps named in ``--only`` (a comma list); an unknown name is a usage error."""
    wanted = set(only.split(","))
    if unknown := wanted - {name for name, _ in steps}:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {[name for name, _ in steps]}")
    return [(name, step) for name, step in steps if name in wanted]


def earlier_report(output: Path, only: str, report: dict[str, Any]) -> dict[str, Any]:
    """For ``--only``: the report already in ``output`` (the other scenarios are kept), else ``report``;
    the load average at the start of this run noted in it."""
    if output.is_file():
        report = json.loads(output.read_text())
    report["machine"][f"load_average_1m_5m_at_start_of_{only}"] = machine()["load_average_1m_5m_at_start"]
    return report


def run_steps(steps: list[tuple[str, Any]], report: dict[str, Any]) -> None:
    """Run each scenario, print its result and put it in ``report`` under its name."""
    for name, step in steps:
        t0 = time.perf_counter()
        print(f"{name} ...", flush=True)
        report[name] = step()
        report[name]["scenario_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report[name], indent=2, default=str), flush=True)


def write_report(args: argparse.Namespace, report: dict[str, Any], started: float, work: Path) -> None:
    """Note the total time (or, for ``--only``, the load average at the end) and write ``report`` to ``--output``."""
    took = round(time.time() - started, 1)
    if args.only:
        report["machine"][f"load_average_1m_5m_at_end_of_{args.only}"] = [round(x, 2) for x in os.getloadavg()[:2]]
    else:
        report["total_s"] = took
        report["machine"]["load_average_1m_5m_at_end"] = [round(x, 2) for x in os.getloadavg()[:2]]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.output} ({took} s; server logs in {work})")


if __name__ == "__main__":
    raise SystemExit(main())
