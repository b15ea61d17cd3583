"""A durable SQLite outbox for escalations and the worker that delivers it.

One row per (escalation, hook), states ``pending`` → ``delivered``. The service writes the rows
(and commits them, ``synchronous=FULL``) before it answers the request, so an escalation
survives a crash right after the answer. Deliveries are recorded with ``FULL`` too; the retry
bookkeeping (claims, reschedules) commits with ``NORMAL`` (no fsync; still safe when the process
is killed): losing one to a power cut only makes a retry come sooner, and a receiver that is
down no longer costs two fsyncs per retry on the lock the request path needs. The
:class:`DeliveryWorker` (one asyncio task) claims due rows, calls the hook and marks a row
delivered only after the hook returned; a failure bumps ``attempts`` and schedules
``next_attempt_at`` with exponential back-off (capped, no give-up: rows stay pending until
delivered or removed by an operator).

A claim is a lease: ``next_attempt_at`` moves ``lease_s`` into the future, so a second worker on
the same file does not take the row while a delivery is in flight, and takes it again once the
lease ran out. Every process holds a shared ``flock`` on ``<outbox>.lock`` while the file is open;
one that finds no other holder when it opens (the previous process exited or was killed) knows
every lease is stale and makes all pending rows due at once, so a restart after a crash resumes
delivery immediately instead of after the lease. Hence exactly-once from guardcal's side,
at-least-once across a crash between the receiver's 2xx and the commit (receivers dedupe on
``id``). On a clean stop the worker finishes its current batch, tries once more what is due,
and releases unfinished claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from guardcal.serve.hooks import EscalationHook
from guardcal.serve.metrics import ServeMetrics

_log = logging.getLogger("guardcal.serve.outbox")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    escalation_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT,
    UNIQUE (escalation_id, hook)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
"""


@dataclass(frozen=True)
class OutboxRow:
    row_id: int
    escalation_id: str
    hook: str
    payload: dict[str, Any]
    attempts: int


class Outbox:
    """The SQLite file; every method is safe to call from the event loop (work runs in a thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._owner: IO[bytes] | None = None
        self._durable = True
        self.released_on_open = 0

    def open(self) -> None:
        """Create the file (and folders) if needed, enable WAL and the schema; if no other
        process has the outbox open, release the stale leases of the one before."""
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        alone = self._take_ownership()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        if alone:
            now = time.time()
            cur = conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?", (now, now)
            )
            self.released_on_open = max(cur.rowcount, 0)
            if self.released_on_open:
                _log.info("outbox %s: %d pending deliveries are due again now", self.path, self.released_on_open)
        self._conn = conn

    def _take_ownership(self) -> bool:
        """Hold a shared flock on ``<outbox>.lock``; True if nobody else held it (we are alone)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: leases simply run out
            return False
        owner = open(self.path.with_name(self.path.name + ".lock"), "ab")  # held while the outbox is open
        try:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        fcntl.flock(owner.fileno(), fcntl.LOCK_SH)  # blocks only while another process is just opening
        self._owner = owner
        return alone

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._owner is not None:
                self._owner.close()  # releases the flock
                self._owner = None

    def _run(self, fn: Callable[[sqlite3.Connection], T], durable: bool | None) -> T:
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"outbox {self.path} is not open; call open() first")
            if durable is not None and durable != self._durable:
                self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            return fn(self._conn)

    async def _call(self, fn: Callable[[sqlite3.Connection], T], durable: bool | None = None) -> T:
        """Run ``fn`` in a thread; ``durable`` True commits with fsync, False without, None: reads."""
        return await asyncio.to_thread(self._run, fn, durable)

    async def enqueue(self, escalations: Sequence[tuple[str, Mapping[str, Any]]], hooks: Sequence[str]) -> None:
        """Durably add one pending row per (escalation id, payload) and hook, in one transaction.

        Idempotent: a row that exists for the same (escalation id, hook) is left as it is.
        """
        now = time.time()
        rows = [
            (esc_id, hook, json.dumps(payload, allow_nan=False), now, now)
            for esc_id, payload in escalations
            for hook in hooks
        ]
        if not rows:
            return

        def insert(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT OR IGNORE INTO outbox (escalation_id, hook, payload, next_attempt_at, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )

        await self._call(insert, durable=True)

    async def claim_due(self, limit: int, lease_s: float) -> list[OutboxRow]:
        """Pending rows whose time has come, leased for ``lease_s`` seconds."""

        def claim(conn: sqlite3.Connection) -> list[OutboxRow]:
            now = time.time()
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                found = conn.execute(
                    "SELECT row_id, escalation_id, hook, payload, attempts FROM outbox "
                    "WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, row_id LIMIT ?",
                    (now, limit),
                ).fetchall()
                conn.executemany(
                    "UPDATE outbox SET next_attempt_at = ? WHERE row_id = ?", [(now + lease_s, r[0]) for r in found]
                )
            return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in found]

        return await self._call(claim, durable=False)

    async def mark_delivered(self, row_id: int) -> bool:
        """Record a delivery; False if the row was already delivered (it is never marked twice)."""

        def mark(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1 "
                "WHERE row_id = ? AND state = 'pending'",
                (time.time(), row_id),
            )
            return cur.rowcount == 1

        return await self._call(mark, durable=True)

    async def reschedule(self, row_id: int, delay_s: float, error: str, count_attempt: bool = True) -> None:
        """Keep a row pending and try again in ``delay_s`` seconds."""
        bump = 1 if count_attempt else 0

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + ?, next_attempt_at = ?, last_error = ? "
                "WHERE row_id = ? AND state = 'pending'",
                (bump, time.time() + delay_s, error[:500], row_id),
            )

        await self._call(update, durable=False)

    async def depth(self) -> int:
        """Pending rows."""
        return await self._call(
            lambda c: int(c.execute("SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0])
        )

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest pending row is due (0 if overdue), None if nothing is pending."""

        def query(conn: sqlite3.Connection) -> float | None:
            (due,) = conn.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
            return None if due is None else max(0.0, float(due) - time.time())

        return await self._call(query)

    async def rows(self) -> list[dict[str, Any]]:
        """Every row as a dict (for operators and tests)."""

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(
                "SELECT row_id, escalation_id, hook, state, attempts, next_attempt_at, last_error FROM outbox"
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        return await self._call(query)


class DeliveryWorker:
    """Delivers due outbox rows to their hooks in one background task."""

    def __init__(
        self,
        outbox: Outbox,
        hooks: Sequence[EscalationHook],
        metrics: ServeMetrics,
        *,
        base_delay_s: float = 1.0,
        max_delay_s: float = 300.0,
        lease_s: float = 60.0,
        poll_s: float = 5.0,
        batch: int = 32,
    ) -> None:
        self.outbox = outbox
        self.hooks = {h.name: h for h in hooks}
        self.metrics = metrics
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.lease_s, self.poll_s, self.batch = lease_s, poll_s, batch
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[int] = set()
        self._missing_warned: set[str] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="guardcal-outbox")

    def wake(self) -> None:
        """A new row was written: look now instead of at the next poll."""
        self._wake.set()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Let the current batch finish (up to ``timeout_s``), then release unfinished claims."""
        if self._task is None:
            return
        self._stopping.set()
        self._wake.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for row_id in list(self._inflight):
            with contextlib.suppress(Exception):
                await self.outbox.reschedule(row_id, 0.0, "released at shutdown", count_attempt=False)
        self._task = None

    async def run_once(self) -> int:
        """Deliver every row due now (one claim of up to ``batch``); return how many were tried."""
        rows = await self.outbox.claim_due(self.batch, self.lease_s)
        self._inflight.update(r.row_id for r in rows)
        await asyncio.gather(*(self._deliver(row) for row in rows))
        self.metrics.outbox_depth.set(await self.outbox.depth())
        return len(rows)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                tried = await self.run_once()
                wait = 0.0 if tried >= self.batch else await self.outbox.next_due_in()
            except Exception:  # a broken disk must not kill the worker; retry later
                _log.exception("outbox worker iteration failed; retrying in %d s", int(self.poll_s))
                tried, wait = 0, self.poll_s
            if tried >= self.batch or self._stopping.is_set():
                continue
            self._wake.clear()
            timeout = self.poll_s if wait is None else min(wait, self.poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        # stopping: one last pass over what is due (within stop()'s timeout), so a clean shutdown
        # flushes what it can; anything else stays pending for the next start
        with contextlib.suppress(Exception):
            await self.run_once()

    async def _deliver(self, row: OutboxRow) -> None:
        try:
            await self._attempt(row)
        except asyncio.CancelledError:
            raise  # the row stays in _inflight, so stop() releases its claim
        except Exception:  # e.g. the outbox file failed; the lease brings the row back later
            _log.exception("outbox bookkeeping failed for escalation %s", row.escalation_id)
        self._inflight.discard(row.row_id)

    async def _attempt(self, row: OutboxRow) -> None:
        hook = self.hooks.get(row.hook)
        if hook is None:
            self._warn_missing(row.hook)
            await self.outbox.reschedule(row.row_id, self.max_delay_s, "hook not enabled", count_attempt=False)
            return
        if row.attempts:
            self.metrics.hook_retries.labels(hook=row.hook).inc()
        try:
            await hook.deliver(row.payload)
        except Exception as exc:  # a hook failure is counted and retried, never raised
            self.metrics.hook_deliveries.labels(hook=row.hook, outcome="failure").inc()
            _log.warning("hook %s failed for escalation %s (%s)", row.hook, row.escalation_id, type(exc).__name__)
            await self.outbox.reschedule(row.row_id, self._delay(row.attempts + 1), f"{type(exc).__name__}: {exc}")
            return
        if await self.outbox.mark_delivered(row.row_id):
            self.metrics.hook_deliveries.labels(hook=row.hook, outcome="success").inc()

    def _delay(self, attempts: int) -> float:
        raw = min(self.max_delay_s, self.base_delay_s * 2 ** min(attempts - 1, 30))
        return raw * random.uniform(0.75, 1.0)  # jitter: restarted receivers are not hit in lock-step

    def _warn_missing(self, name: str) -> None:
        if name not in self._missing_warned:
            self._missing_warned.add(name)
            _log.warning("outbox holds escalations for hook %r, which is not enabled; they stay pending", name)
