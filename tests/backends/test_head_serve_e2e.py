"""A real ``guardcal serve`` reads a pooled head with its own bundle, on both backends.

The folder is issue 21's pooled-head candidate, put together from committed files (the shipped
LoRA and ``results/guard/candidates/pooled-head/head/pooled_head.safetensors``), served with the bundle
fitted on its calibration readings by the transformers backend. On each backend (the vllm one reads
the head inside the engine, ``backends/vllm_readout``) the bundle's identity check accepts it (same
adapter hash), a harmless question is allowed on its own, a threat is not, and no score reaches the
caller or the server's log.
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
CLASSIFY = "classify-key-pooled-head-0123456789"


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def server(request, tmp_path_factory, default_model, launch_serve):  # type: ignore[no-untyped-def]
    backend = request.param
    work = request.getfixturevalue("vllm_env") if backend == "vllm" else tmp_path_factory.mktemp("pooled-head")
    folder = work / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(DEFAULT_ADAPTER / name, folder / name)
    shutil.copyfile(CANDIDATE / "head" / FILENAME, folder / FILENAME)
    flags = ["--backend", backend, "--adapter", str(folder), "--bundle", str(CANDIDATE / "bundle.json")]
    if backend == "vllm":
        flags += ["--dtype", "float32", "--vllm-kv-cache-bytes", str(256 << 20)]
    drop = ("VLLM_ENABLE_V1_MULTIPROCESSING",) if backend == "vllm" else ()
    proc = launch_serve(work, *flags, keys=f"{CLASSIFY}:classify", drop=drop, ready_timeout_s=300)
    yield proc.base_url
    log = proc.stop(timeout_s=120)
    if backend == "transformers":
        assert "pooled head" in log, log  # the backend says why the prefix cache is off
    # no scores in the server's own log (vLLM's pooler config prints its unset logit_mean/logit_sigma)
    assert "p_unsafe" not in log and not re.search(r"logit\W*[:=]\W*-?\d", log)


def _classify(base: str, text: str) -> dict:  # type: ignore[type-arg]
    r = httpx.post(
        base + "/classify", json={"input": text}, headers={"Authorization": f"Bearer {CLASSIFY}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_the_head_decides_through_the_real_server(server) -> None:  # type: ignore[no-untyped-def]
    harmless = _classify(server, "What is the capital of France?")
    threat = _classify(server, "I will find you and hurt you, and your family too.")
    assert harmless["label"] == "safe" and harmless["action"] == "allow"
    assert threat["label"] == "unsafe" and threat["action"] == "escalate"  # the bundle certifies no block
    for body in (harmless, threat):
        assert not {"confidence", "p_unsafe", "raw_confidence"} & set(body)
