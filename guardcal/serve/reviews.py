"""The review store: escalations and audit samples kept for human review, and reviewers' verdicts (SQLite).

Items arrive through the built-in ``review`` hook (:class:`ReviewHook`), so they ride the durable
outbox: an escalation is in the outbox before its request is answered, and the outbox delivers it
here until this store has committed it (``INSERT OR IGNORE`` on the escalation id makes the
at-least-once delivery exactly-once). The file sits beside the outbox (``reviews.sqlite3``) and is
kept apart from it: the outbox purges delivered rows, while review items and verdicts are kept.

Three tables. ``review_items``: one row per escalation or audit sample (kind ``escalation`` with
sampling probability 1, or ``audit`` with the probability it was drawn with), its provisional label,
calibrated confidence, the raw P(unsafe) (for refits only, never served), the input or (redacted)
only its sha256, and the model identity and policy version that decided it. ``review_verdicts``: the
accepted verdict per item (label, reviewer = the API key's name, optional note). ``review_history``:
every verdict submitted, with its outcome (``recorded``, ``repeat`` of the same label, or ``conflict``
with the recorded one, which is refused and kept here). Verdicts commit with ``synchronous=FULL``
before the API answers, so a 2xx verdict survives SIGKILL and power loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from guardcal.calibrate.verdicts import ITEM_COLUMNS, read_reviews, reviewed_rows
from guardcal.core.examples import LABELS

__all__ = ["ITEM_COLUMNS", "ReviewHook", "ReviewStore", "UnknownItemError", "VerdictResult", "read_reviews"]

T = TypeVar("T")
Outcome = Literal["recorded", "repeat", "conflict"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    escalation_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('escalation', 'audit')),
    reason TEXT NOT NULL,
    label TEXT NOT NULL,
    action TEXT NOT NULL,
    confidence REAL,
    p_unsafe_raw REAL,
    sampling_probability REAL NOT NULL CHECK (sampling_probability > 0 AND sampling_probability <= 1),
    input TEXT,
    input_sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT,
    policy_version TEXT,
    created_at REAL NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_verdicts (
    escalation_id TEXT PRIMARY KEY REFERENCES review_items (escalation_id),
    label TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    note TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_history (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    escalation_id TEXT NOT NULL,
    label TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    note TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('recorded', 'repeat', 'conflict')),
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS review_items_policy ON review_items (kind, policy_version);
CREATE INDEX IF NOT EXISTS review_items_age ON review_items (created_at, seq);
"""


class UnknownItemError(LookupError):
    """No review item has this id (404)."""


@dataclass(frozen=True)
class VerdictResult:
    """What happened to a submitted verdict, and the item's accepted verdict afterwards."""

    outcome: Outcome
    label: str  # the accepted label (the earlier one on a conflict)
    reviewer: str
    item: dict[str, Any]


def _when(timestamp: Any) -> float:
    try:
        return datetime.fromisoformat(str(timestamp)).timestamp()
    except ValueError:
        return time.time()


def item_from_payload(payload: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``review_items`` row (without ``seq`` and ``stored_at``) of one hook payload."""
    audit = payload.get("reason") == "audit"
    text = payload.get("input")
    digest = payload.get("input_sha256") or hashlib.sha256(str(text).encode()).hexdigest()
    return (
        str(payload["id"]),
        "audit" if audit else "escalation",
        str(payload.get("reason")),
        str(payload.get("label")),
        str(payload.get("action")),
        payload.get("confidence"),
        payload.get("p_unsafe_raw"),
        float(payload.get("sampling_probability") or 1.0) if audit else 1.0,
        text if isinstance(text, str) else None,
        digest,
        json.dumps(payload.get("model") or {}, sort_keys=True),
        payload.get("model_version"),
        payload.get("policy_version"),
        _when(payload.get("timestamp")),
    )


class ReviewStore:
    """The SQLite review file; async methods run their SQL in a thread (safe from the event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection now (blocking; the async methods call this in a thread)."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"review store {self.path} is not open; call open() first")
            return fn(self._conn)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.run, fn)

    async def add(self, payload: Mapping[str, Any]) -> bool:
        """Store one hook payload as a review item; False if it was stored already (idempotent)."""
        row = (*item_from_payload(payload), time.time())

        def insert(conn: sqlite3.Connection) -> bool:
            marks = ", ".join("?" * len(row))
            cur = conn.execute(
                f"INSERT OR IGNORE INTO review_items ({', '.join(ITEM_COLUMNS[1:])}, stored_at) VALUES ({marks})", row
            )
            return cur.rowcount == 1

        return await self._call(insert)

    async def queue(
        self, *, after: tuple[float, int] = (float("-inf"), 0), limit: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        """Pending items (no accepted verdict), oldest first (request time, then arrival), those after the
        ``(created_at, seq)`` of ``after``; and how many are pending in all."""

        def query(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            pending = "NOT EXISTS (SELECT 1 FROM review_verdicts v WHERE v.escalation_id = i.escalation_id)"
            cur = conn.execute(
                f"SELECT {', '.join('i.' + c for c in ITEM_COLUMNS)} FROM review_items i "
                f"WHERE {pending} AND (i.created_at, i.seq) > (?, ?) ORDER BY i.created_at, i.seq LIMIT ?",
                (*after, limit),
            )
            items = [dict(zip(ITEM_COLUMNS, r, strict=True)) for r in cur.fetchall()]
            (total,) = conn.execute(f"SELECT COUNT(*) FROM review_items i WHERE {pending}").fetchone()
            return items, int(total)

        return await self._call(query)

    async def pending(self) -> int:
        return (await self.queue(limit=0))[1]

    async def record(self, escalation_id: str, label: str, reviewer: str, note: str | None) -> VerdictResult:
        """Record a verdict in one durable transaction: the first one is accepted, the same label again is a
        ``repeat`` (nothing changes), another label a ``conflict`` (refused; kept in the history).

        Raises UnknownItemError for an id the store does not hold, ValueError for a label not in LABELS.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {list(LABELS)}, got {label!r}")
        return await self._call(lambda conn: _record(conn, escalation_id, label, reviewer, note))

    async def verdicts(self) -> list[dict[str, Any]]:
        """Every item that has an accepted verdict, joined with it (for estimates, exports and refits)."""
        return await self._call(reviewed_rows)

    async def audited(self, model_version: str, policy_version: str) -> list[dict[str, Any]]:
        """Reviewed audit samples of one model and policy version (what the audit estimate is taken over)."""
        where = ("i.kind = 'audit' AND i.model_version = ? AND i.policy_version = ?", (model_version, policy_version))
        return await self._call(lambda conn: reviewed_rows(conn, where))


def _record(
    conn: sqlite3.Connection, escalation_id: str, label: str, reviewer: str, note: str | None
) -> VerdictResult:
    now = time.time()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        found = conn.execute(
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM review_items WHERE escalation_id = ?", (escalation_id,)
        ).fetchone()
        if found is None:
            raise UnknownItemError(escalation_id)
        item = dict(zip(ITEM_COLUMNS, found, strict=True))
        earlier = conn.execute(
            "SELECT label, reviewer FROM review_verdicts WHERE escalation_id = ?", (escalation_id,)
        ).fetchone()
        if earlier is None:
            conn.execute(
                "INSERT INTO review_verdicts (escalation_id, label, reviewer, note, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (escalation_id, label, reviewer, note, now),
            )
            outcome: Outcome = "recorded"
            accepted, by = label, reviewer
        else:
            accepted, by = earlier
            outcome = "repeat" if accepted == label else "conflict"
        conn.execute(
            "INSERT INTO review_history (escalation_id, label, reviewer, note, outcome, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (escalation_id, label, reviewer, note, outcome, now),
        )
    return VerdictResult(outcome, accepted, by, item)


class ReviewHook:
    """The built-in ``review`` hook: stores each escalation and audit sample in the review store."""

    name = "review"

    def __init__(self, store: ReviewStore, on_stored: Callable[[], Any] | None = None) -> None:
        self.store = store
        self.on_stored = on_stored

    async def deliver(self, payload: dict[str, Any]) -> None:
        if await self.store.add(payload) and self.on_stored is not None:
            await self.on_stored()
