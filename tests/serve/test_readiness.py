"""Readiness that tells the truth (issue 20, item 8), in process over FakeBackend.

``/readyz`` follows the model worker's liveness and backend failures in a row, ``/healthz`` turns
503 only when the worker has stopped for good. The same with a real ``guardcal serve`` process and
the real model, whose worker is killed: test_worker_death_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import types

import pytest

import guardcal.serve.service as service_mod
from guardcal.serve import FakeBackend, create_app

pytestmark = pytest.mark.anyio


class MortalBackend(FakeBackend):
    """A FakeBackend whose model worker can die (``alive()`` False from then on)."""

    dead = False

    def alive(self) -> bool:
        return not self.dead


async def test_a_dead_worker_makes_readyz_and_healthz_503_and_classify_fail_closed(kit, make_settings):
    backend = MortalBackend(kit.table_handler())
    app = create_app(make_settings(), backend)
    async with kit.running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        backend.dead = True
        ready = await client.get("/readyz")
        health = await client.get("/healthz")
        verdict = await client.post("/classify", json={"input": "hello there"})
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
    assert "model worker has stopped" in ready.json()["error"]["message"]
    assert health.status_code == 503 and "restart" in health.json()["error"]["message"]
    # fails closed: no verdict (so never allow) from an instance that cannot score
    assert verdict.status_code == 503 and verdict.headers["retry-after"] == "5"


async def test_a_slow_or_starting_backend_keeps_healthz_200(kit, make_settings):
    backend = MortalBackend(kit.table_handler())
    app = create_app(make_settings(), backend)
    async with kit.running(app) as client:
        backend.ready = False  # loading, not dead
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_failures_in_a_row_make_readyz_503_until_the_backend_answers_again(kit, make_settings, monkeypatch):
    failing = {"on": False}
    table = kit.table_handler()

    def handler(texts):
        if failing["on"]:
            raise RuntimeError("GPU fell off the bus")
        return table(texts)

    app = create_app(make_settings(unready_after_failures=3), kit.backend(handler))
    async with kit.running(app) as client:
        failing["on"] = True
        for n in range(3):
            assert (await client.get("/readyz")).status_code == 200, f"unready after {n} failures"
            r = await client.post("/classify", json={"input": "hello there"})
            assert (r.status_code, r.json()["action"]) == (200, "escalate")  # each one fails closed
        unready = await client.get("/readyz")  # probes the backend, which still fails
        assert unready.status_code == 503 and "last 3 backend calls failed" in unready.json()["error"]["message"]
        failing["on"] = False
        # probes are rate-limited: right after a failed one, readiness waits for the next
        assert (await client.get("/readyz")).status_code == 503
        # without traffic (the load balancer took the instance out) a probe brings it back
        monkeypatch.setattr(service_mod, "PROBE_EVERY_S", 0.0)
        assert (await client.get("/readyz")).status_code == 200
        failing["on"] = True
        for _ in range(3):
            await client.post("/classify", json={"input": "hello there"})
        assert (await client.get("/readyz")).status_code == 503
        failing["on"] = False
        monkeypatch.setattr(service_mod, "PROBE_EVERY_S", 3600.0)
        # a request that scores resets the count as well
        assert (await client.post("/classify", json={"input": "hello there"})).json()["action"] == "allow"
        assert (await client.get("/readyz")).status_code == 200


async def test_timeouts_count_as_failures(kit, make_settings):
    slow = {"s": 0.0}
    table = kit.table_handler()

    async def handler(texts):
        await asyncio.sleep(slow["s"])
        return table(texts)

    app = create_app(make_settings(unready_after_failures=2, request_timeout_s=0.3), kit.backend(handler))
    async with kit.running(app) as client:
        slow["s"] = 5.0
        for _ in range(2):
            r = await client.post("/classify", json={"input": "hello there"})
            assert r.json()["action"] == "escalate"
        assert (await client.get("/readyz")).status_code == 503


# --- the backends' own liveness ----------------------------------------------------------------


async def test_transformers_backend_is_alive_until_its_worker_dies_and_waiters_then_fail_at_once():
    from guardcal.backends.transformers_backend import TransformersBackend
    from guardcal.errors import BackendError

    class Killed(BaseException):
        """Not an Exception: escapes the batcher's error handling, as a fatal error would."""

    backend = TransformersBackend(dtype="float32")  # no model loaded: only the worker matters here

    def model_thread_dies(fn, *args):  # what the model thread hands back when it dies mid-forward
        future = asyncio.get_running_loop().create_future()
        future.set_exception(Killed())
        return future

    backend._in_model_thread = model_thread_dies
    backend.scorer = types.SimpleNamespace(score=None)  # never called: the model thread dies first
    assert not backend.alive()
    backend._queue = asyncio.Queue()
    backend._worker = asyncio.create_task(backend._run())
    backend._worker.add_done_callback(backend._on_worker_exit)
    assert backend.alive()
    with pytest.raises(BackendError, match="worker stopped"):
        await asyncio.wait_for(backend.score(["hello"]), 10)  # answered at once, not at a deadline
    assert not backend.alive()
    await backend.aclose()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death, wanted
async def test_vllm_backend_is_alive_while_its_engine_thread_runs(monkeypatch):
    from guardcal.backends.vllm_backend import VLLMBackend
    from guardcal.backends.vllm_engine import EngineLoop

    class Fatal(BaseException):
        pass

    def enqueue(*args, **kwargs):
        raise Fatal()  # a fatal engine error: the engine thread ends

    # the thread's clean-up imports vllm's dist helpers (30 s of imports): stand-ins instead
    for name in ("vllm", "vllm.distributed", "vllm.distributed.parallel_state"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    llm = types.SimpleNamespace(llm_engine=types.SimpleNamespace(), enqueue=enqueue)
    backend = VLLMBackend.__new__(VLLMBackend)
    backend._engine = None
    assert not backend.alive()
    backend._engine = engine = EngineLoop(lambda: llm)
    await engine.start()
    assert backend.alive()
    future = engine.submit({"prompt_token_ids": [1]}, None)
    for _ in range(500):
        if not backend.alive():
            break
        await asyncio.sleep(0.01)
    assert not backend.alive()
    future.cancel()
    with contextlib.suppress(Exception):
        await engine.stop(timeout_s=10)
