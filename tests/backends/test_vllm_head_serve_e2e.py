"""`guardcal serve --backend vllm` with a pooled head: a real process on 127.0.0.1, the real engine.

The folder is issue 21's committed pooled-head candidate (the shipped LoRA beside
``results/guard/candidates/pooled-head/head/pooled_head.safetensors``) with the bundle fitted on its
calibration readings by the transformers backend. The vllm backend must be accepted by that bundle's
identity check, read the head inside the engine (``backends/vllm_readout``), decide as the bundle
says, and return no score to the caller.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from guardcal.assets import DEFAULT_ADAPTER
from guardcal.core.pooled_head import FILENAME

CANDIDATE = Path(__file__).parents[2] / "results" / "guard" / "candidates" / "pooled-head"
CLASSIFY = "classify-key-vllm-head-0123456789"


@pytest.fixture(scope="module")
def server(vllm_env, launch_serve):  # type: ignore[no-untyped-def]
    folder = vllm_env / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(DEFAULT_ADAPTER / name, folder / name)
    shutil.copyfile(CANDIDATE / "head" / FILENAME, folder / FILENAME)
    proc = launch_serve(
        vllm_env, "--backend", "vllm", "--dtype", "float32", "--vllm-kv-cache-bytes", str(256 << 20),
        "--adapter", str(folder), "--bundle", str(CANDIDATE / "bundle.json"),
        keys=f"{CLASSIFY}:classify", drop=("VLLM_ENABLE_V1_MULTIPROCESSING",), ready_timeout_s=300,
    )  # fmt: skip
    yield proc.base_url
    log = proc.stop(timeout_s=120)
    assert "Application shutdown complete" in log, log[-5000:]
    # no scores in the server's own log (vLLM's pooler config prints its unset logit_mean/logit_sigma)
    assert "p_unsafe" not in log and not re.search(r"logit\W*[:=]\W*-?\d", log)


def _classify(base: str, text: str) -> dict:  # type: ignore[type-arg]
    r = httpx.post(
        base + "/classify", json={"input": text}, headers={"Authorization": f"Bearer {CLASSIFY}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_the_head_decides_through_the_vllm_server(server) -> None:  # type: ignore[no-untyped-def]
    harmless = _classify(server, "What is the capital of France?")
    threat = _classify(server, "I will find you and hurt you, and your family too.")
    assert harmless["label"] == "safe" and harmless["action"] == "allow"
    assert threat["label"] == "unsafe" and threat["action"] == "escalate"  # the bundle certifies no block
    for body in (harmless, threat):
        assert not {"confidence", "p_unsafe", "raw_confidence"} & set(body)
