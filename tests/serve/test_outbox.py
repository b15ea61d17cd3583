"""The SQLite outbox, its delivery worker and retention (no network: in-process recording hooks)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from guardcal.serve import create_app
from guardcal.serve.errors import OutboxFullError
from guardcal.serve.metrics import ServeMetrics
from guardcal.serve.outbox import DeliveryWorker, Outbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "sub" / "outbox.sqlite3")
    box.open()
    yield box
    box.close()


def worker_for(outbox: Outbox, hooks, **kwargs) -> DeliveryWorker:
    options = {"base_delay_s": 0.01, "max_delay_s": 0.05, "lease_s": 30.0, "poll_s": 0.05, "hook_timeout_s": 5.0}
    options.update(kwargs)
    return DeliveryWorker(outbox, hooks, ServeMetrics(), **options)


async def test_wal_mode_and_idempotent_enqueue_storing_each_payload_once(outbox):
    text = "a raw input that must not be stored once per hook"
    await outbox.enqueue([("e1", {"id": "e1", "input": text}), ("e2", {"id": "e2"})], ["a", "b", "c"])
    await outbox.enqueue([("e1", {"id": "e1", "changed": True})], ["a"])
    rows = await outbox.rows()
    assert len(rows) == 6 and {r["state"] for r in rows} == {"pending"}
    assert await outbox.depth() == 6
    assert await outbox.payload_count() == 2  # one payload per escalation, whatever the number of hooks
    claimed = await outbox.claim_due(10, lease_s=30.0)
    assert [r.payload for r in claimed if r.escalation_id == "e1"] == [{"id": "e1", "input": text}] * 3
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stored = [r[0] for r in conn.execute("SELECT payload FROM escalations")]
    assert sum(text in p for p in stored) == 1


async def test_claim_is_a_lease_and_delivery_is_marked_once(outbox):
    await outbox.enqueue([("e1", {"id": "e1"})], ["a"])
    first = await outbox.claim_due(10, lease_s=0.2)
    assert [r.escalation_id for r in first] == ["e1"] and first[0].payload == {"id": "e1"}
    assert await outbox.claim_due(10, lease_s=0.2) == []  # leased to the first claimer
    await asyncio.sleep(0.25)
    again = await outbox.claim_due(10, lease_s=0.2)  # a crashed claimer's row comes back
    assert [r.row_id for r in again] == [first[0].row_id]
    assert await outbox.mark_delivered(first[0].row_id)
    assert not await outbox.mark_delivered(first[0].row_id)
    assert await outbox.depth() == 0 and await outbox.next_due_in() is None


async def test_reschedule_counts_attempts_and_delays(outbox):
    await outbox.enqueue([("e1", {"id": "e1"})], ["a"])
    (row,) = await outbox.claim_due(1, lease_s=0.0)
    await outbox.reschedule(row.row_id, 60.0, "HTTP 500")
    (state,) = await outbox.rows()
    assert state["attempts"] == 1 and state["last_error"] == "HTTP 500"
    assert state["next_attempt_at"] > time.time() + 50
    assert await outbox.claim_due(1, lease_s=0.0) == []


async def test_worker_retries_until_delivered_exactly_once(outbox, kit):
    flaky, steady = kit.RecordingHook("flaky", fail_first=3), kit.RecordingHook("steady")
    worker = worker_for(outbox, [flaky, steady])
    await outbox.enqueue([(f"e{i}", {"id": f"e{i}"}) for i in range(5)], ["flaky", "steady"])
    worker.start()
    worker.wake()
    await kit.wait_for(lambda: len(flaky.payloads) == 5 and len(steady.payloads) == 5)
    await asyncio.sleep(0.1)  # nothing more arrives
    await worker.stop()
    assert sorted(p["id"] for p in flaky.payloads) == [f"e{i}" for i in range(5)]
    assert sorted(p["id"] for p in steady.payloads) == [f"e{i}" for i in range(5)]
    rows = await outbox.rows()
    assert {r["state"] for r in rows} == {"delivered"}
    assert sum(r["attempts"] for r in rows if r["hook"] == "flaky") == 5 + 3
    reg = worker.metrics.registry
    assert reg.get_sample_value("guardcal_hook_deliveries_total", {"hook": "flaky", "outcome": "failure"}) == 3
    assert reg.get_sample_value("guardcal_hook_deliveries_total", {"hook": "flaky", "outcome": "success"}) == 5
    assert reg.get_sample_value("guardcal_outbox_depth") == 0


async def test_rows_for_a_disabled_hook_stay_pending(outbox, kit):
    worker = worker_for(outbox, [kit.RecordingHook("present")])
    await outbox.enqueue([("e1", {"id": "e1"})], ["absent"])
    assert await worker.run_once() == 1
    (row,) = await outbox.rows()
    assert row["state"] == "pending" and row["attempts"] == 0 and row["last_error"] == "hook not enabled"


async def test_stop_releases_an_unfinished_claim(outbox, kit):
    class Stuck:
        name = "stuck"

        async def deliver(self, payload):
            await asyncio.sleep(30)

    worker = worker_for(outbox, [Stuck()], lease_s=300.0)
    await outbox.enqueue([("e1", {"id": "e1"})], ["stuck"])
    worker.start()
    worker.wake()
    await kit.wait_for(lambda: bool(worker._inflight))
    await worker.stop(timeout_s=0.05)
    (row,) = await outbox.rows()
    assert row["state"] == "pending" and row["attempts"] == 0
    assert row["next_attempt_at"] <= time.time()  # due again at once for the next process


async def test_a_second_process_resumes_pending_rows(tmp_path, kit):
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path)
    first.open()
    await first.enqueue([("e1", {"id": "e1"}), ("e2", {"id": "e2"})], ["h"])
    first.close()  # the process ends before any delivery
    second = Outbox(path)
    second.open()
    hook = kit.RecordingHook("h")
    worker = worker_for(second, [hook])
    worker.start()
    await kit.wait_for(lambda: len(hook.payloads) == 2)
    await worker.stop()
    second.close()
    assert sorted(p["id"] for p in hook.payloads) == ["e1", "e2"]


async def test_a_restart_after_a_crash_releases_stale_leases_at_once(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    crashed = Outbox(path)
    crashed.open()
    await crashed.enqueue([("e1", {"id": "e1"}), ("e2", {"id": "e2"})], ["h"])
    assert len(await crashed.claim_due(10, lease_s=300.0)) == 2  # in flight when the process died
    crashed.close()  # the kernel drops a killed process's flock the same way
    restarted = Outbox(path)
    restarted.open()
    assert restarted.released_on_open == 2
    assert sorted(r.escalation_id for r in await restarted.claim_due(10, lease_s=300.0)) == ["e1", "e2"]
    restarted.close()


async def test_a_second_live_process_leaves_the_first_ones_leases_alone(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path)
    first.open()
    await first.enqueue([("e1", {"id": "e1"})], ["h"])
    assert len(await first.claim_due(10, lease_s=300.0)) == 1
    second = Outbox(path)
    second.open()  # the first still has the file open: its lease stands
    assert second.released_on_open == 0 and await second.claim_due(10, lease_s=300.0) == []
    second.close()
    first.close()


async def test_a_clean_stop_delivers_what_is_due_before_returning(outbox, kit):
    hook = kit.RecordingHook("h")
    worker = worker_for(outbox, [hook], poll_s=30.0)  # would not look again for 30 s
    worker.start()
    await asyncio.sleep(0.05)
    await outbox.enqueue([("e1", {"id": "e1"})], ["h"])  # written, worker not woken
    await worker.stop()
    assert [p["id"] for p in hook.payloads] == ["e1"]
    assert {r["state"] for r in await outbox.rows()} == {"delivered"}


async def test_escalations_and_deliveries_are_fsynced_retry_bookkeeping_is_not(outbox):
    def synchronous() -> int:  # 2 = FULL (fsync at commit), 1 = NORMAL
        return int(outbox._run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0], None))

    await outbox.enqueue([("e1", {"id": "e1"}), ("e2", {"id": "e2"})], ["h"])
    assert synchronous() == 2
    first, second = await outbox.claim_due(10, lease_s=30.0)
    assert synchronous() == 1
    await outbox.reschedule(first.row_id, 0.0, "HTTP 500")
    assert synchronous() == 1
    assert await outbox.mark_delivered(second.row_id) and synchronous() == 2
    await outbox.claim_due(10, lease_s=30.0)
    await outbox.enqueue([("e3", {"id": "e3"})], ["h"])
    assert synchronous() == 2


# ------------------------------------------------------------------ per-delivery timeout (at-least-once, no stall)


class Hung:
    """A hook whose deliveries never return (a plugin stuck on a dead connection)."""

    name = "hung"

    def __init__(self) -> None:
        self.calls = 0

    async def deliver(self, payload):
        self.calls += 1
        await asyncio.sleep(3600)


async def test_a_hung_hook_times_out_and_does_not_stall_the_others(outbox, kit):
    hung, steady = Hung(), kit.RecordingHook("steady")
    worker = worker_for(outbox, [hung, steady], hook_timeout_s=0.3, base_delay_s=30.0, max_delay_s=60.0)
    await outbox.enqueue([("e1", {"id": "e1"})], ["hung", "steady"])
    worker.start()
    worker.wake()
    await kit.wait_for(lambda: len(steady.payloads) == 1 and hung.calls == 1)
    started = time.monotonic()
    await outbox.enqueue([("e2", {"id": "e2"})], ["steady"])  # behind e1's hung delivery without a timeout
    worker.wake()
    await kit.wait_for(lambda: len(steady.payloads) == 2, timeout_s=5.0)
    assert time.monotonic() - started < 2.0
    await worker.stop()
    by_hook = {(r["escalation_id"], r["hook"]): r for r in await outbox.rows()}
    hung_row = by_hook[("e1", "hung")]
    assert hung_row["state"] == "pending" and hung_row["attempts"] == 1  # failed once, retried later
    assert "hook_timeout_s=0.3" in hung_row["last_error"]
    assert by_hook[("e2", "steady")]["state"] == "delivered"
    reg = worker.metrics.registry
    assert reg.get_sample_value("guardcal_hook_deliveries_total", {"hook": "hung", "outcome": "failure"}) == 1


def test_the_lease_must_outlast_the_hook_timeout(outbox):
    with pytest.raises(ValueError, match="must exceed hook_timeout_s"):
        worker_for(outbox, [], lease_s=10.0, hook_timeout_s=10.0)


# ------------------------------------------------------------------ retention and the size cap


async def _deliver_all(outbox: Outbox) -> None:
    for row in await outbox.claim_due(1000, lease_s=30.0):
        assert await outbox.mark_delivered(row.row_id)


async def test_delivered_rows_are_purged_after_the_retention_pending_ones_never(outbox):
    await outbox.enqueue([("old", {"id": "old", "input": "x" * 300_000}), ("both", {"id": "both"})], ["a"])
    await _deliver_all(outbox)
    await outbox.enqueue([("both", {"id": "both"})], ["b"])  # one hook done, one still pending
    await outbox.enqueue([("new", {"id": "new"})], ["a"])
    assert await outbox.purge(retention_s=3600) == 0  # delivered a moment ago: kept
    assert await outbox.payload_count() == 3
    await asyncio.sleep(0.05)
    assert await outbox.purge(retention_s=0.01) == 2  # old/a and both/a
    rows = {(r["escalation_id"], r["hook"]): r["state"] for r in await outbox.rows()}
    assert rows == {("both", "b"): "pending", ("new", "a"): "pending"}
    assert await outbox.payload_count() == 2  # "old" is gone; "both" stays while a hook still needs it
    assert [r.escalation_id for r in await outbox.claim_due(10, lease_s=30.0)] == ["both", "new"]
    outbox._run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(), None)
    assert outbox.path.stat().st_size < 100_000  # the purged input's pages went back to the file system


async def test_the_worker_purges_on_its_own(outbox, kit):
    hook = kit.RecordingHook("h")
    worker = worker_for(outbox, [hook], retention_s=0.0, purge_every_s=0.05)
    await outbox.enqueue([("e1", {"id": "e1"})], ["h"])
    worker.start()
    worker.wake()
    await kit.wait_for(lambda: len(hook.payloads) == 1)

    async def emptied() -> bool:
        return await outbox.rows() == [] and await outbox.payload_count() == 0

    for _ in range(100):
        if await emptied():
            break
        await asyncio.sleep(0.05)
    await worker.stop()
    assert await emptied()


async def test_the_size_cap_refuses_new_escalations_instead_of_filling_the_disk(tmp_path):
    cap = 1 << 20
    box = Outbox(tmp_path / "capped.sqlite3", max_bytes=cap)
    box.open()
    big = "x" * 50_000
    stored = 0
    with pytest.raises(OutboxFullError, match="GUARDCAL_OUTBOX_MAX_BYTES"):
        for i in range(100):
            await box.enqueue([(f"e{i}", {"id": f"e{i}", "input": big})], ["a", "b"])
            stored += 1
    assert 10 <= stored <= 20 and await box.used_bytes() <= cap
    assert await box.payload_count() == stored and await box.depth() == 2 * stored  # the refused one left nothing
    # once delivered, old rows make room (purged before their retention) and escalations are taken again
    await _deliver_all(box)
    await box.enqueue([("later", {"id": "later", "input": big})], ["a", "b"])
    assert await box.payload_count() == 1 and await box.depth() == 2
    box.close()
    assert (tmp_path / "capped.sqlite3").stat().st_size <= cap + (64 << 10)


LEGACY_SCHEMA = """
CREATE TABLE outbox (
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
"""


async def test_an_outbox_from_the_one_table_layout_is_converted_with_its_pending_rows(tmp_path, kit):
    path = tmp_path / "old.sqlite3"
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_SCHEMA)
        conn.executemany(
            "INSERT INTO outbox (escalation_id, hook, payload, state, attempts, next_attempt_at, created_at, "
            "delivered_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("e1", "a", '{"id": "e1"}', "delivered", 1, now, now, now, None),
                ("e1", "b", '{"id": "e1"}', "pending", 2, now + 600, now, None, "HTTP 500"),
                ("e2", "a", '{"id": "e2"}', "pending", 0, now, now, None, None),
            ],
        )
    box = Outbox(path)
    box.open()
    assert box.converted_on_open == 3 and box.released_on_open == 1
    assert await box.payload_count() == 2 and await box.depth() == 2
    hook_a, hook_b = kit.RecordingHook("a"), kit.RecordingHook("b")
    worker = worker_for(box, [hook_a, hook_b])
    assert await worker.run_once() == 2
    assert [p["id"] for p in hook_a.payloads] == ["e2"] and [p["id"] for p in hook_b.payloads] == ["e1"]
    box.close()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "outbox" not in tables and {"escalations", "deliveries"} <= tables


class Refusing:
    """A hook whose receiver never accepts: escalations pile up in the outbox."""

    name = "refusing"

    async def deliver(self, payload):
        raise RuntimeError("receiver down")


@pytest.mark.parametrize(("fail_action", "status", "action"), [("block", 200, "block"), ("escalate", 503, None)])
async def test_a_full_outbox_answers_the_fail_action_never_an_undeliverable_escalate(
    kit, make_settings, fail_action, status, action
):
    settings = make_settings(outbox_max_bytes=1 << 20, fail_action=fail_action, hook_retry_base_s=30.0,
                             hook_retry_max_s=60.0)  # fmt: skip
    app = create_app(settings, kit.backend(kit.table_handler(default=0.6)), hooks=[Refusing()])
    texts = [f"{i:05d} " + "y" * 19_990 for i in range(160)]
    async with kit.running(app) as client:
        service = app.state.service
        for start in range(0, 160, 16):  # escalations pile up until the outbox is at its cap
            stored = await service.outbox.payload_count()
            r = await client.post("/classify", json={"inputs": texts[start : start + 16]})
            if r.status_code != 200 or r.json()["results"][0]["action"] != "escalate":
                break
        assert 16 <= stored < 160 and await service.outbox.used_bytes() <= 1 << 20
        assert r.status_code == status, r.text  # the batch that did not fit
        if action is not None:
            assert {v["action"] for v in r.json()["results"]} == {action}
        else:
            assert "outbox is full" in r.json()["error"]["message"] and "GUARDCAL_OUTBOX_MAX_BYTES" in r.text
        assert await service.outbox.payload_count() == stored  # nothing of the refused batch was written
        metrics = service.metrics.registry
        assert (
            metrics.get_sample_value(
                "guardcal_hook_deliveries_total", {"hook": "refusing", "outcome": "enqueue_failed"}
            )
            >= 1
        )
