"""The SQLite outbox and its delivery worker (no network: in-process recording hooks)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

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
    options = {"base_delay_s": 0.01, "max_delay_s": 0.05, "lease_s": 30.0, "poll_s": 0.05, **kwargs}
    return DeliveryWorker(outbox, hooks, ServeMetrics(), **options)


async def test_wal_mode_and_idempotent_enqueue(outbox):
    await outbox.enqueue([("e1", {"id": "e1"}), ("e2", {"id": "e2"})], ["a", "b"])
    await outbox.enqueue([("e1", {"id": "e1", "changed": True})], ["a"])
    rows = await outbox.rows()
    assert len(rows) == 4 and {r["state"] for r in rows} == {"pending"}
    assert await outbox.depth() == 4
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


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
