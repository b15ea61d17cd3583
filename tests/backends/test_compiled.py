"""``guardcal serve --compile``: the transformers backend with a torch.compile'd forward.

Inductor compiles a 30-layer model in minutes on 2 cores, so the backend test runs the real
default model cut to its first two layers (saved as a local model folder): the compile path,
the prefix cache and the micro-batching are the ones the full model takes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from guardcal.backends.compiled import compile_forward, cxx_compiler
from guardcal.backends.transformers_backend import TransformersBackend
from guardcal.errors import BackendError
from guardcal.serve.settings import ServeSettings

TEXTS = ["How do I bake bread?", "I will find you and hurt you", "hello there", "Write a poem about cats and dogs"]


@pytest.fixture(scope="module")
def two_layer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from guardcal.models.loading import load_model

    loaded = load_model("default", dtype="bfloat16")
    lm = loaded.model
    lm.model.layers = lm.model.layers[:2]
    lm.config.num_hidden_layers = 2
    lm.config.layer_types = lm.config.layer_types[:2] if getattr(lm.config, "layer_types", None) else None
    out = tmp_path_factory.mktemp("two-layer")
    lm.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def _serve(model: Path, compile: bool) -> tuple[np.ndarray, TransformersBackend]:  # noqa: A002
    """log p(Safe), log p(Unsafe) of each text: four concurrent single requests and one of three texts."""

    async def run() -> tuple[np.ndarray, TransformersBackend]:
        backend = TransformersBackend(str(model), dtype="bfloat16", forward_batch=8, max_wait_ms=50, compile=compile)
        await backend.start()
        try:
            results = await asyncio.gather(*(backend.score([t]) for t in TEXTS), backend.score(TEXTS[:3]))
        finally:
            await backend.aclose()
        rows = [
            np.log([p_safe, p_unsafe]) for r in results for p_safe, p_unsafe in zip(r.p_safe, r.p_unsafe, strict=True)
        ]
        return np.array(rows), backend

    return asyncio.run(run())


@pytest.mark.skipif(cxx_compiler() is None, reason="no C++ compiler (apt-get install g++; .ci/run installs it)")
def test_compiled_backend_scores_like_eager(two_layer_model: Path) -> None:
    eager, _ = _serve(two_layer_model, compile=False)
    compiled, backend = _serve(two_layer_model, compile=True)
    assert backend.scorer.prefix_status.startswith("on:")  # the cached prefix runs through the compiled forward
    assert hasattr(backend.scorer.model.forward, "_torchdynamo_orig_callable") or "compile" in repr(
        backend.scorer.model.forward
    )
    assert compiled.shape == (len(TEXTS) + 3, 2)
    np.testing.assert_allclose(compiled, eager, rtol=0.02)  # bf16 log-probs; fused kernels round differently
    assert np.ptp(eager[:, 0]) > 0.5  # different inputs, different scores: the comparison means something


def test_compile_without_a_cxx_compiler_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert cxx_compiler() is None
    with pytest.raises(BackendError, match="C\\+\\+ compiler.*apt-get install g\\+\\+"):
        compile_forward(torch.nn.Linear(2, 2))


def test_compile_is_refused_for_vllm() -> None:
    with pytest.raises(ValueError, match="transformers backend"):
        ServeSettings(backend="vllm", compile=True, bundle="none", escalate_below=0.9)
    assert ServeSettings(compile=True, bundle="none", escalate_below=0.9).compile
