"""``vllm_engine.EngineLoop`` in pooling mode (a pooled head's engine), with a stand-in ``LLM``: what arrives
together runs as one ``encode`` call, each caller gets its own output, and a failure reaches every caller of
its batch without ending the engine thread. The real engine is tested in test_vllm_head.py."""

from __future__ import annotations

import asyncio
import sys
import threading
import types

import pytest

from guardcal.backends.vllm_engine import EngineLoop
from guardcal.errors import BackendError


class StandIn:
    """``encode`` answers each prompt with its own token ids; it can fail or drop an output once."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail = self.drop = False
        self.gate = threading.Event()
        self.llm_engine = types.SimpleNamespace()

    def encode(self, prompts, pooling_task, lora_request, use_tqdm):  # type: ignore[no-untyped-def]
        self.gate.wait(10)  # hold the first call so that the rest queue up behind it
        self.calls.append(len(prompts))
        assert pooling_task == "token_embed" and use_tqdm is False
        if self.fail:
            raise RuntimeError("out of KV cache")
        outputs = [p["prompt_token_ids"] for p in prompts]
        return outputs[:-1] if self.drop else outputs


@pytest.fixture()
def loop_and_llm(monkeypatch):  # type: ignore[no-untyped-def]
    # the thread's clean-up imports vllm's dist helpers (30 s of imports): stand-ins instead
    for name in ("vllm", "vllm.distributed", "vllm.distributed.parallel_state"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    llm = StandIn()
    return EngineLoop(lambda: llm, pooling_task="token_embed"), llm


def test_what_arrives_together_runs_as_one_encode_and_each_gets_its_own(loop_and_llm) -> None:  # type: ignore[no-untyped-def]
    engine, llm = loop_and_llm

    async def go():  # type: ignore[no-untyped-def]
        await engine.start()
        try:
            first = engine.submit({"prompt_token_ids": [0]}, None)
            await asyncio.sleep(0.2)  # the engine thread takes it and waits at the gate
            rest = [engine.submit({"prompt_token_ids": [i]}, None) for i in range(1, 6)]
            llm.gate.set()
            return await asyncio.gather(first, *rest)
        finally:
            await engine.stop(timeout_s=10)

    assert asyncio.run(go()) == [[i] for i in range(6)]
    assert llm.calls == [1, 5]  # the five that queued behind the first ran as one batch


@pytest.mark.parametrize(
    ("fail", "drop", "message"), [(True, False, "out of KV cache"), (False, True, "pooling outputs for")]
)
def test_a_failed_batch_fails_its_callers_and_the_engine_goes_on(loop_and_llm, fail, drop, message) -> None:  # type: ignore[no-untyped-def]
    engine, llm = loop_and_llm
    llm.gate.set()

    async def go():  # type: ignore[no-untyped-def]
        await engine.start()
        try:
            llm.fail, llm.drop = fail, drop
            failed = await asyncio.gather(
                *(engine.submit({"prompt_token_ids": [i]}, None) for i in range(6)), return_exceptions=True
            )
            llm.fail = llm.drop = False
            after = await engine.submit({"prompt_token_ids": [7]}, None)
            return failed, after
        finally:
            await engine.stop(timeout_s=10)

    failed, after = asyncio.run(go())
    assert all(isinstance(f, BackendError) and message in str(f) for f in failed), failed
    assert after == [7]
