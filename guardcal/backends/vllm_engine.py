"""One in-process vLLM engine, driven by one thread, usable from any asyncio loop.

vLLM's ``AsyncLLM`` cannot run its engine core in-process (vLLM 0.32 raises
``NotImplementedError`` for asyncio without multiprocessing), so guardcal drives the
synchronous engine inside ``vllm.LLM`` from a dedicated thread:

- callers ``submit`` a request from their event loop and await a future;
- the engine thread drains everything submitted so far into the engine, then calls
  ``step()`` while anything is in flight, so requests that arrive together run in the same
  forward passes (vLLM's continuous batching), and requests that arrive mid-flight join the
  running batch at the next step;
- each finished output goes back to its caller's loop with ``call_soon_threadsafe``; a
  cancelled future aborts its engine request.

A pooling engine (``pooling_task``, e.g. a pooled head's ``token_embed``) has no ``enqueue``:
the engine thread runs everything submitted so far as one ``LLM.encode`` call, so requests that
arrive together still share forward passes, and those that arrive meanwhile form the next batch.

The engine is built, stepped and shut down on the one thread, so vLLM never sees two
threads, and the event loop never runs model code. This module knows nothing about
prompts or labels (that is ``vllm_backend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from guardcal.errors import BackendError


@dataclass(eq=False)
class _Submit:
    prompt: Any
    params: Any
    lora: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] = field(repr=False)
    engine_id: str | None = None


@dataclass(eq=False)
class _Abort:
    request: _Submit


_STOP = object()


def external_id(internal_id: str) -> str:
    """The id vLLM reports outputs under, for the id ``LLM.enqueue`` returned.

    ``enqueue`` numbers requests "0", "1", ... and returns the engine's internal id, which
    appends "-" and 8 random characters (unless VLLM_DISABLE_REQUEST_ID_RANDOMIZATION is set);
    outputs and ``abort_request`` use the number.
    """
    return internal_id.rsplit("-", 1)[0]


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    """Resolve ``future`` on its own loop (from the engine thread); a closed loop is ignored."""

    def apply() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody is waiting
        loop.call_soon_threadsafe(apply)


class EngineLoop:
    """Owns a ``vllm.LLM`` built by ``build()`` on its own thread; see the module docstring."""

    def __init__(
        self, build: Callable[[], Any], name: str = "guardcal-vllm-engine", pooling_task: str | None = None
    ) -> None:
        self._build = build
        self._name = name
        self.pooling_task = pooling_task
        self._batch: list[_Submit] = []
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.llm: Any = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.llm is not None

    async def start(self) -> None:
        """Build the engine on the engine thread; raise what the build raised."""
        if self._thread is not None:
            raise BackendError("this vLLM engine loop was already started; create a new backend instead")
        loop = asyncio.get_running_loop()
        built: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop, built), name=self._name, daemon=True)
        self._thread.start()
        await built

    def submit(self, prompt: Any, params: Any, lora: Any = None) -> asyncio.Future[Any]:
        """Queue one request; the future resolves to its finished ``RequestOutput``."""
        if not self.running or self._stopped.is_set():
            raise BackendError("the vLLM engine is not running; start() the backend first")
        loop = asyncio.get_running_loop()
        request = _Submit(prompt, params, lora, loop, loop.create_future())

        def on_done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():  # the caller gave up (timeout, disconnect): free the engine slot
                self._inbox.put(_Abort(request))

        request.future.add_done_callback(on_done)
        self._inbox.put(request)
        return request.future

    async def stop(self, timeout_s: float = 60.0) -> None:
        """Fail what is in flight, shut the engine down and join the thread."""
        self._stopped.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._inbox.put(_STOP)
        await asyncio.to_thread(thread.join, timeout_s)

    # -- the engine thread -------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, built: asyncio.Future[None]) -> None:
        try:
            self.llm = self._build()
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            _settle(loop, built, None, exc)
            return
        _settle(loop, built, None, None)
        pending: dict[str, _Submit] = {}
        try:
            while self._drain(pending, block=not pending):
                if self._batch:
                    self._encode_batch()
                if pending:
                    self._step(pending)
        finally:
            closed = BackendError("the vLLM engine was shut down before this request finished")
            for request in [*pending.values(), *self._batch]:
                _settle(request.loop, request.future, None, closed)
            self._drain_after_stop(closed)
            self._shutdown()

    def _drain(self, pending: dict[str, _Submit], block: bool) -> bool:
        """Move everything queued into the engine; False when asked to stop."""
        engine = self.llm.llm_engine
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if item is _STOP:
                return False
            if isinstance(item, _Abort) and self.pooling_task is not None:
                self._batch = [r for r in self._batch if r is not item.request]
                continue
            if isinstance(item, _Abort):
                engine_id = item.request.engine_id
                if engine_id is not None and pending.pop(engine_id, None) is not None:
                    with contextlib.suppress(Exception):
                        engine.abort_request([engine_id])
                continue
            if self.pooling_task is not None:
                self._batch.append(item)
                continue
            try:
                (internal_id,) = self.llm.enqueue(item.prompt, item.params, lora_request=item.lora, use_tqdm=False)
            except Exception as exc:  # noqa: BLE001 - this request fails, the engine lives on
                _settle(item.loop, item.future, None, BackendError(f"vLLM refused the request: {exc}"))
                continue
            item.engine_id = external_id(internal_id)
            pending[item.engine_id] = item

    def _step(self, pending: dict[str, _Submit]) -> None:
        engine = self.llm.llm_engine
        try:
            outputs = engine.step()
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure, the thread lives on
            failure = BackendError(f"vLLM engine step failed: {type(exc).__name__}: {exc}")
            for request in pending.values():
                _settle(request.loop, request.future, None, failure)
            with contextlib.suppress(Exception):
                engine.abort_request(list(pending))
            pending.clear()
            return
        for output in outputs:
            if getattr(output, "finished", False):
                done = pending.pop(output.request_id, None) if output.request_id in pending else None
                if done is not None:
                    _settle(done.loop, done.future, output, None)
        if pending and not engine.has_unfinished_requests():  # never spin on requests the engine lost
            lost = BackendError("vLLM finished without returning this request's output; see the server log")
            for request in pending.values():
                _settle(request.loop, request.future, None, lost)
            pending.clear()

    def _encode_batch(self) -> None:
        """One ``LLM.encode`` over the pooling requests drained so far; each gets its own output."""
        batch, self._batch = [r for r in self._batch if not r.future.done()], []
        if not batch:
            return
        loras = [r.lora for r in batch]
        try:
            outputs = self.llm.encode(
                [r.prompt for r in batch],
                pooling_task=self.pooling_task,
                lora_request=loras[0] if all(lora is loras[0] for lora in loras) else loras,
                use_tqdm=False,
            )
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure, the thread lives on
            failure = BackendError(f"vLLM pooling failed: {type(exc).__name__}: {exc}")
            for request in batch:
                _settle(request.loop, request.future, None, failure)
            return
        if len(outputs) != len(batch):
            lost = BackendError(f"vLLM returned {len(outputs)} pooling outputs for {len(batch)} requests")
            for request in batch:
                _settle(request.loop, request.future, None, lost)
            return
        for request, output in zip(batch, outputs, strict=True):
            _settle(request.loop, request.future, output, None)

    def _drain_after_stop(self, error: BackendError) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Submit):
                _settle(item.loop, item.future, None, error)

    def _shutdown(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
        del llm
        with contextlib.suppress(Exception):  # lets a later engine in this process set up again
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        gc.collect()
