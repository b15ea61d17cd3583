"""One deadline per request, over scoring and the outbox write (issue 20, item 9), in process.

The outbox is the real SQLite file, held locked by a second connection (another process, a slow
disk): the write cannot finish. Before, the request waited out SQLite's 30 s busy timeout and then
answered ``escalate`` for an escalation that was never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time

import pytest

from guardcal.serve import create_app

pytestmark = pytest.mark.anyio

TIMEOUT_S = 2.0  # a cold SQLite write on a loaded CI disk took over 0.5 s
SCORING_S = 0.5  # half the deadline goes to scoring; the write must fit in what is left


@contextlib.contextmanager
def locked(path):
    """Hold the outbox's write lock from another connection (as a second writer or a stuck disk would)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def registry_value(app, name, **labels):
    return app.state.service.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("mode", "fail_action", "status", "action"),
    [
        ("enforce", "block", 200, "block"),  # the fail action, not "escalate"
        ("enforce", "escalate", 503, None),  # escalate is what could not be done: no verdict, retry
        ("shadow", "escalate", 200, "allow"),  # shadow mode answers allow whatever happens
    ],
)
async def test_an_escalation_that_cannot_be_stored_by_the_deadline_is_never_answered_escalate(
    kit, make_settings, mode, fail_action, status, action
):
    table = kit.table_handler()

    async def slow(texts):
        await asyncio.sleep(SCORING_S)
        return table(texts)

    hook = kit.RecordingHook()
    settings = make_settings(request_timeout_s=TIMEOUT_S, mode=mode, fail_action=fail_action)
    app = create_app(settings, kit.backend(slow), hooks=[hook])
    async with kit.running(app) as client:
        assert (await client.post("/classify", json={"input": "borderline joke"})).json()["action"] == (
            "allow" if mode == "shadow" else "escalate"
        )  # stored: the outbox works when nothing holds it
        with locked(settings.outbox):
            t0 = time.perf_counter()
            r = await client.post("/classify", json={"inputs": ["borderline joke", "hello there"]})
            took = time.perf_counter() - t0
        assert r.status_code == status, r.text
        # one deadline for scoring and the write together (before: 30 s of SQLite busy timeout, then escalate)
        assert took < TIMEOUT_S + 0.5, took
        if status == 503:
            assert r.headers["retry-after"] == "5" and "could not be stored" in r.json()["error"]["message"]
        else:
            first, second = r.json()["results"]
            assert first["action"] == action and second["action"] == "allow"
            if action == "block":
                assert first["label"] == "unsafe"
        assert registry_value(app, "guardcal_hook_deliveries_total", hook="recorder", outcome="enqueue_failed") == 1
        # the write that outlived its request still lands once the lock is gone (nothing escalated is lost)
        await kit.wait_for(lambda: len(hook.payloads) == 2)


async def test_scoring_that_eats_the_deadline_leaves_time_to_store_its_fail_closed_escalation(kit, make_settings):
    async def hung(texts):
        await asyncio.sleep(60)

    hook = kit.RecordingHook()
    settings = make_settings(request_timeout_s=TIMEOUT_S)
    app = create_app(settings, kit.backend(hung), hooks=[hook])
    async with kit.running(app) as client:
        t0 = time.perf_counter()
        r = await client.post("/classify", json={"input": "hello there"})
        took = time.perf_counter() - t0
        await kit.wait_for(lambda: len(hook.payloads) == 1)
    assert r.status_code == 200 and r.json()["action"] == "escalate"  # timed out: fail-closed, and stored
    assert hook.payloads[0]["reason"] == "timeout"
    assert took < TIMEOUT_S + 0.5, took
