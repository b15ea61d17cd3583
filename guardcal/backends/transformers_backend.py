"""The transformers serving backend: the shared scorer behind dynamic micro-batching.

Concurrent ``score`` calls are collected for up to ``max_wait_ms`` (or until
``forward_batch`` texts are waiting) and scored together (one packed forward pass, or a
few padded ones) on a worker thread, so the event loop never blocks and a burst of
single requests becomes a few batched forwards. Decision-token probabilities go through the
same ``HFScorer`` + ``core.confidence`` path as ``guardcal evaluate``, with three serving-only
speed-ups: the instruction prefix's KV cache is computed once and reused, so each forward runs
only the per-request tokens; those tokens are packed end to end in one row, with no padding
(``scoring.packed``; not with ``compile``); and ``dtype="auto"`` runs the model in bfloat16 on
CPUs with native bf16 instructions (``backends.precision``).

An input over ``max_input_tokens`` tokens is scored as overlapping windows (``core.windows``):
its windows are rows of the same micro-batch, and its reading is its highest-P(unsafe) window's,
with every window's reading attached (``WindowedScores``). An input that needs more than
``max_windows`` windows fails only its own request, with ``InputTooLongError``, before any forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from guardcal.backends.base import ClassifierBackend
from guardcal.core.confidence import Scores
from guardcal.core.prompt import PromptTemplate
from guardcal.core.windows import DEFAULT_MAX_TOKENS, DEFAULT_MAX_WINDOWS, Windowed, WindowedScores
from guardcal.errors import BackendError, InputTooLongError

_log = logging.getLogger("guardcal.backends.transformers")


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[Scores] = field(repr=False)


class TransformersBackend(ClassifierBackend):
    """Loads a causal LM (+ adapter) with transformers and scores with micro-batching."""

    name = "transformers"

    def __init__(
        self,
        model: str = "default",
        adapter: str | None = None,
        reasoning: bool = False,
        dtype: str = "auto",
        forward_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_input_tokens: int = DEFAULT_MAX_TOKENS,
        max_new_tokens: int = 256,
        prefix_cache: bool = True,
        compile: bool = False,  # noqa: A002 - the serve setting's name
        max_windows: int | None = DEFAULT_MAX_WINDOWS,
        prompt: str | None = None,
    ) -> None:
        from guardcal.backends.precision import resolve_dtype
        from guardcal.core.profiles import load_profile

        self.model, self.adapter, self.dtype = model, adapter, resolve_dtype(dtype)
        self.prefix_cache, self.compile = prefix_cache, compile
        self.template = PromptTemplate.for_profile(load_profile(prompt), reasoning)
        self.forward_batch, self.max_wait_s = forward_batch, max_wait_ms / 1000.0
        self.max_input_tokens, self.max_new_tokens = max_input_tokens, max_new_tokens
        self.max_windows = max_windows
        self.scorer: Any = None
        self._identity: dict[str, Any] = {}
        self._queue: asyncio.Queue[_Pending] | None = None
        self._running: list[_Pending] = []  # the batch being scored (failed if the worker dies)
        self._worker: asyncio.Task[None] | None = None
        # One dedicated model thread: torch runs one forward at a time anyway, and glibc gives every
        # thread that allocates its own malloc arena, so rotating over asyncio.to_thread's pool grew
        # RSS by ~150-190 MiB under sustained load (flat on one thread; benchmarks/load_faults.py soak)
        self._executor: ThreadPoolExecutor | None = None

    def _in_model_thread(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardcal-model")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        await self._in_model_thread(self._load)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="guardcal-transformers-batcher")
        self._worker.add_done_callback(self._on_worker_exit)
        # the first forwards pay one-off costs (with --compile: the compile) before /readyz says ready
        await self.score(["warm-up"])
        if self.compile:  # a batch of two as well: torch.compile specialises a dimension of size 1
            await self.score(["warm-up", "a longer warm-up input of a few more tokens"])
        self.ready = True

    def _load(self) -> None:
        from guardcal.models.loading import adapter_fingerprint, load_model, model_identity
        from guardcal.scoring.scorer import HFScorer

        loaded = load_model(self.model, self.adapter, dtype=self.dtype)
        if self.compile:
            from guardcal.backends.compiled import compile_forward

            compile_forward(loaded.model)
        self.scorer = HFScorer(
            loaded.model,
            loaded.tokenizer,
            self.template,
            batch_size=self.forward_batch,
            max_input_tokens=self.max_input_tokens,
            max_new_tokens=self.max_new_tokens,
            max_windows=self.max_windows,
            prefix_cache=self.prefix_cache,
            packing=not self.compile,  # a per-request loop in attention would recompile per batch shape
            head=loaded.head,
        )
        self.scorer.prefix()  # build (and self-check) the prefix cache before the first request
        _log.info(
            "transformers backend: dtype=%s, prefix cache %s, compiled %s",
            self.dtype,
            self.scorer.prefix_status,
            self.compile,
        )
        self._identity = {
            "model_id": model_identity(self.model),
            "adapter_hash": adapter_fingerprint(self.adapter),
            "mode": self.template.mode,
            "prompt_fingerprint": self.template.fingerprint(self.scorer.spec.surfaces, self.scorer.windows),
            "label_spec": self.scorer.spec.to_dict(),
            "prompt_profile": self.template.spec.describe(),
        }

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def alive(self) -> bool:
        """The batching task that feeds the model thread runs (False once it stopped, or before start)."""
        return self._worker is not None and not self._worker.done()

    async def score(self, texts: list[str]) -> Scores:
        if self._queue is None or self._worker is None or self._worker.done():
            raise BackendError("the transformers backend is not running; start() it first")
        future: asyncio.Future[Scores] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(list(texts), future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while sum(len(p.texts) for p in batch) < self.forward_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            self._running = [p for p in batch if not p.future.done()]
            await self._score_batch(self._running)
            self._running = []

    def _on_worker_exit(self, worker: asyncio.Task[None]) -> None:
        """The batcher stopped (cancelled by aclose, or killed by an error): fail whoever still waits."""
        died = None if worker.cancelled() else worker.exception()
        if died is not None:
            _log.error(
                "the transformers model worker died (%s); the server reports itself unready", type(died).__name__
            )
        failure = BackendError("the transformers model worker stopped before this request was scored")
        for p in self._running:
            if not p.future.done():
                p.future.set_exception(failure)
        while self._queue is not None and not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(failure)

    async def _score_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        try:
            results = await self._in_model_thread(self._score_requests, [p.texts for p in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure, the worker lives on
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(BackendError(f"transformers backend failed: {type(exc).__name__}"))
            return
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, InputTooLongError):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    def _score_requests(self, requests: list[list[str]]) -> list[WindowedScores | InputTooLongError]:
        """On the model thread: split each request's texts into windows, score every window of the
        requests that fit in one call, and hand each request its own inputs (and windows) back; a
        request with an input over ``max_windows`` gets its InputTooLongError instead."""
        split: list[list[Windowed] | InputTooLongError] = []
        for texts in requests:
            try:
                split.append(self.scorer.split(texts))
            except InputTooLongError as exc:
                split.append(exc)
        fitting = [part for parts in split if not isinstance(parts, InputTooLongError) for part in parts]
        scores = self.scorer.score_split(fitting).scores
        out: list[WindowedScores | InputTooLongError] = []
        start = 0
        for parts in split:
            if isinstance(parts, InputTooLongError):
                out.append(parts)
                continue
            out.append(scores.select(start, start + len(parts)))
            start += len(parts)
        return out

    async def aclose(self) -> None:
        self.ready = False
        if self._worker is not None and not self._worker.done():  # a dead one was reported when it died
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
