"""A durable SQLite outbox for escalations, the worker that delivers it, and its retention.

Two tables: ``escalations`` holds each payload once (the input text, or its sha256 with
``redact_input``), ``deliveries`` one row per (escalation, hook), states ``pending`` →
``delivered``. The service writes both (and commits them, ``synchronous=FULL``) before it
answers the request, so an escalation survives a crash right after the answer. Deliveries are
recorded with ``FULL`` too; the retry bookkeeping (claims, reschedules) and purges commit with
``NORMAL`` (no fsync; still safe when the process is killed): losing one to a power cut only
makes a retry come sooner, and a receiver that is down no longer costs two fsyncs per retry on
the lock the request path needs. The :class:`DeliveryWorker` (one asyncio task) claims due rows,
calls the hook (each call bounded by ``hook_timeout_s``, so one hung hook cannot hold up the
others) and marks a row delivered only after the hook returned; a failure bumps ``attempts`` and
schedules ``next_attempt_at`` with exponential back-off (capped, no give-up: rows stay pending
until delivered or removed by an operator).

A claim is a lease: ``next_attempt_at`` moves ``lease_s`` into the future, so a second worker on
the same file does not take the row while a delivery is in flight, and takes it again once the
lease ran out. Every process holds a shared ``flock`` on ``<outbox>.lock`` while the file is open;
one that finds no other holder when it opens (the previous process exited or was killed) knows
every lease is stale and makes all pending rows due at once, so a restart after a crash resumes
delivery immediately instead of after the lease. Delivery is **at-least-once**: a hook can get the
same escalation again when a delivery's success is not recorded (a webhook's 2xx lost to a read
timeout, or a crash between the hook's return and the commit), so receivers deduplicate on ``id``.
On a clean stop the worker finishes its current batch, tries once more what is due, and releases
unfinished claims.

What is kept, and for how long: a pending delivery stays until its hook accepts it (nothing
escalated is dropped); a delivered one is deleted ``retention_s`` after delivery (checked about
once a minute), and the payload with the last of its deliveries. The live data is capped at
``max_bytes``: an escalation that would go past it is refused (:class:`OutboxFullError`, which
the service answers with its fail action) after delivered rows, whatever their age, were purged
to make room; the file never grows past the cap plus SQLite's own overhead (WAL up to 64 MiB).
An outbox from an older guardcal (one ``outbox`` table, the payload once per hook) is converted
on open, pending rows included.
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

from guardcal.serve.errors import OutboxFullError
from guardcal.serve.hooks import EscalationHook
from guardcal.serve.metrics import ServeMetrics

_log = logging.getLogger("guardcal.serve.outbox")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    escalation_id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    escalation_id TEXT NOT NULL REFERENCES escalations (escalation_id),
    hook TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT,
    UNIQUE (escalation_id, hook)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (state, delivered_at);
"""
#: the one-table layout before payloads were stored once (converted on open)
LEGACY_TABLE = "outbox"
#: bytes a delivery row and its index entries can take, ``last_error`` (500 characters) included:
#: the size check before a write reserves this much for the retry bookkeeping that follows it
DELIVERY_ROW_BYTES = 800
#: a payload's share of page headers and of a partly filled last page
PAGE_SLACK_BYTES = 4096
WAL_LIMIT_BYTES = 64 << 20
#: how long a stopping worker may finish its batch and flush what is due (a deployment's grace
#: period must cover the drain, this and any preStop pause)
WORKER_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class OutboxRow:
    row_id: int
    escalation_id: str
    hook: str
    payload: dict[str, Any]
    attempts: int


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the database file that hold data (free pages, reused by later writes, excluded)."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    return int(pages - free) * int(size)


def _purge_delivered(conn: sqlite3.Connection, delivered_before: float) -> int:
    """Delete deliveries delivered by ``delivered_before`` and payloads no delivery needs (caller's transaction)."""
    ids = [
        (r[0],)
        for r in conn.execute(
            "SELECT DISTINCT escalation_id FROM deliveries WHERE state = 'delivered' AND delivered_at <= ?",
            (delivered_before,),
        )
    ]
    cur = conn.execute("DELETE FROM deliveries WHERE state = 'delivered' AND delivered_at <= ?", (delivered_before,))
    conn.executemany(
        "DELETE FROM escalations WHERE escalation_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM deliveries d WHERE d.escalation_id = escalations.escalation_id)",
        ids,
    )
    return max(cur.rowcount, 0)


def _convert_legacy(conn: sqlite3.Connection) -> int:
    """Move an older outbox's rows (payload once per hook) into the two tables; returns rows moved."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEGACY_TABLE,)
        ).fetchone()
        if not found:
            return 0
        conn.execute(
            "INSERT OR IGNORE INTO escalations (escalation_id, payload, created_at) "
            f"SELECT escalation_id, payload, MIN(created_at) FROM {LEGACY_TABLE} GROUP BY escalation_id"
        )
        cur = conn.execute(
            "INSERT OR IGNORE INTO deliveries (escalation_id, hook, state, attempts, next_attempt_at, created_at, "
            "delivered_at, last_error) SELECT escalation_id, hook, state, attempts, next_attempt_at, created_at, "
            f"delivered_at, last_error FROM {LEGACY_TABLE} ORDER BY row_id"
        )
        moved = max(cur.rowcount, 0)
        conn.execute(f"DROP TABLE {LEGACY_TABLE}")
    return moved


class Outbox:
    """The SQLite file; every method is safe to call from the event loop (work runs in a thread).

    ``max_bytes`` caps the live data (None: no cap); see the module docstring.
    """

    def __init__(self, path: str | Path, *, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._owner: IO[bytes] | None = None
        self._durable = True
        self.released_on_open = 0
        self.converted_on_open = 0

    def open(self) -> None:
        """Create the file (and folders) if needed, enable WAL and the schema, convert an older
        layout; if no other process has the outbox open, release the stale leases of the one before."""
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        alone = self._take_ownership()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only: purges then shrink it
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        conn.executescript(SCHEMA)
        self.converted_on_open = _convert_legacy(conn)
        if self.converted_on_open:
            _log.info("outbox %s: converted %d rows to the current layout", self.path, self.converted_on_open)
        if alone:
            now = time.time()
            cur = conn.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?", (now, now)
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
        """Durably store each (escalation id, payload) once and a pending delivery per hook, in one transaction.

        Idempotent: an escalation or delivery that exists is left as it is. Raises OutboxFullError
        (nothing written) when the rows would take the live data past ``max_bytes``.
        """
        now = time.time()
        if not escalations or not hooks:
            return
        payloads = [(esc_id, json.dumps(payload, allow_nan=False), now) for esc_id, payload in escalations]
        deliveries = [(esc_id, hook, now, now) for esc_id, _ in escalations for hook in hooks]
        sizes = [len(p[1].encode()) for p in payloads]
        need = sum(n + n // 64 + PAGE_SLACK_BYTES for n in sizes) + DELIVERY_ROW_BYTES * len(deliveries)

        def insert(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                self._make_room(conn, need)
                conn.executemany(
                    "INSERT OR IGNORE INTO escalations (escalation_id, payload, created_at) VALUES (?, ?, ?)", payloads
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO deliveries (escalation_id, hook, next_attempt_at, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    deliveries,
                )

        await self._call(insert, durable=True)

    def _make_room(self, conn: sqlite3.Connection, need: int) -> None:
        """Within the write transaction: purge delivered rows early if needed, else refuse."""
        if self.max_bytes is None or used_bytes(conn) + need <= self.max_bytes:
            return
        purged = _purge_delivered(conn, float("inf"))
        if purged:
            _log.warning(
                "outbox %s reached its size cap (%d bytes): purged %d delivered rows before their retention ran out",
                self.path, self.max_bytes, purged,
            )  # fmt: skip
        if used_bytes(conn) + need > self.max_bytes:
            raise OutboxFullError(
                f"the escalation outbox is full ({self.max_bytes} bytes of undelivered escalations): a hook has not "
                "accepted deliveries for a while; check the webhook receiver (guardcal_outbox_depth), or raise "
                "GUARDCAL_OUTBOX_MAX_BYTES if the volume has room"
            )

    async def purge(self, retention_s: float) -> int:
        """Delete deliveries delivered more than ``retention_s`` ago (and payloads no delivery needs)."""

        def run(conn: sqlite3.Connection) -> int:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                n = _purge_delivered(conn, time.time() - retention_s)
            if n:
                conn.executescript("PRAGMA incremental_vacuum;")  # free pages back to the disk (runs every step)
            return n

        return await self._call(run, durable=False)

    async def claim_due(self, limit: int, lease_s: float) -> list[OutboxRow]:
        """Pending rows whose time has come, leased for ``lease_s`` seconds."""

        def claim(conn: sqlite3.Connection) -> list[OutboxRow]:
            now = time.time()
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                found = conn.execute(
                    "SELECT d.row_id, d.escalation_id, d.hook, e.payload, d.attempts FROM deliveries d "
                    "JOIN escalations e ON e.escalation_id = d.escalation_id "
                    "WHERE d.state = 'pending' AND d.next_attempt_at <= ? "
                    "ORDER BY d.next_attempt_at, d.row_id LIMIT ?",
                    (now, limit),
                ).fetchall()
                leased = [(now + lease_s, r[0]) for r in found]
                conn.executemany("UPDATE deliveries SET next_attempt_at = ? WHERE row_id = ?", leased)
            return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in found]

        return await self._call(claim, durable=False)

    async def mark_delivered(self, row_id: int) -> bool:
        """Record a delivery; False if the row was already delivered (it is never marked twice)."""

        def mark(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'delivered', delivered_at = ?, attempts = attempts + 1 "
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
                "UPDATE deliveries SET attempts = attempts + ?, next_attempt_at = ?, last_error = ? "
                "WHERE row_id = ? AND state = 'pending'",
                (bump, time.time() + delay_s, error[:500], row_id),
            )

        await self._call(update, durable=False)

    async def depth(self) -> int:
        """Pending deliveries."""
        return await self._call(
            lambda c: int(c.execute("SELECT COUNT(*) FROM deliveries WHERE state='pending'").fetchone()[0])
        )

    async def used_bytes(self) -> int:
        """Bytes of live data in the file (what ``max_bytes`` caps)."""
        return await self._call(used_bytes)

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest pending row is due (0 if overdue), None if nothing is pending."""

        def query(conn: sqlite3.Connection) -> float | None:
            (due,) = conn.execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'").fetchone()
            return None if due is None else max(0.0, float(due) - time.time())

        return await self._call(query)

    async def rows(self) -> list[dict[str, Any]]:
        """Every delivery row as a dict (for operators and tests)."""

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(
                "SELECT row_id, escalation_id, hook, state, attempts, next_attempt_at, delivered_at, last_error "
                "FROM deliveries"
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        return await self._call(query)

    async def payload_count(self) -> int:
        """Stored payloads (one per escalation, however many hooks it goes to)."""
        return await self._call(lambda c: int(c.execute("SELECT COUNT(*) FROM escalations").fetchone()[0]))


class DeliveryWorker:
    """Delivers due outbox rows to their hooks in one background task, and purges delivered ones.

    ``hook_timeout_s`` bounds each ``deliver`` call (a hook past it counts as failed and is retried
    later; the lease must outlast it). ``retention_s`` is how long delivered rows are kept (None:
    forever); purges run at most every ``purge_every_s``.
    """

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
        hook_timeout_s: float = 30.0,
        retention_s: float | None = None,
        purge_every_s: float = 60.0,
    ) -> None:
        if lease_s <= hook_timeout_s:
            raise ValueError(f"lease_s ({lease_s}) must exceed hook_timeout_s ({hook_timeout_s}), or a slow "
                             "delivery's row would be claimed again while it is in flight")  # fmt: skip
        self.outbox = outbox
        self.hooks = {h.name: h for h in hooks}
        self.metrics = metrics
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.lease_s, self.poll_s, self.batch = lease_s, poll_s, batch
        self.hook_timeout_s = hook_timeout_s
        self.retention_s, self.purge_every_s = retention_s, purge_every_s
        self._next_purge = 0.0
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

    async def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
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

    async def purge_if_due(self) -> int:
        """Purge delivered rows past ``retention_s`` if ``purge_every_s`` has passed since the last purge."""
        if self.retention_s is None or time.monotonic() < self._next_purge:
            return 0
        self._next_purge = time.monotonic() + self.purge_every_s
        purged = await self.outbox.purge(self.retention_s)
        if purged:
            _log.info("outbox: purged %d delivered rows older than %d s", purged, int(self.retention_s))
        return purged

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.purge_if_due()
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
            # bounded per delivery: a hung hook fails this row only; the batch (and every other hook) moves on
            await asyncio.wait_for(hook.deliver(row.payload), self.hook_timeout_s)
        except Exception as exc:  # a hook failure is counted and retried, never raised
            self.metrics.hook_deliveries.labels(hook=row.hook, outcome="failure").inc()
            if isinstance(exc, TimeoutError):
                error = f"TimeoutError: no answer within hook_timeout_s={self.hook_timeout_s:g}"
            else:
                error = f"{type(exc).__name__}: {exc}"
            _log.warning("hook %s failed for escalation %s (%s)", row.hook, row.escalation_id, type(exc).__name__)
            await self.outbox.reschedule(row.row_id, self._delay(row.attempts + 1), error)
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
