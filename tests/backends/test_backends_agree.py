"""The transformers and vllm backends agree on real inputs (XSTest + OpenAI Moderation rows).

Same labels, same identity, and P(unsafe) within a tolerance that depends on what is compared:

- float32 in both (like with like): the engines differ only in kernels and summation order;
  measured on these 12 inputs: max |diff| of p_unsafe (renormalised over the labels) 2.7e-6,
  of the full-vocabulary p_safe 5e-6 -> tolerance 1e-4.
- the served default (``dtype="auto"``: bfloat16 on this CPU, which has AVX512-BF16) in both:
  bf16 rounding through 30 layers, in different kernels (vLLM's CPU attention and linear ops vs
  PyTorch's with the transformers backend's prefix cache); measured max |diff| 0.039 (mean
  0.009), full-vocabulary p_safe 0.042 -> tolerance 0.08.
  Float32 vs bf16 within one backend moved p_unsafe by up to 0.037 (vllm) and 0.014
  (transformers) on 4 short inputs, so a bundle fitted in float32 is best served in float32
  (``--dtype float32``) where that precision matters.
- reasoning mode, float32, 16-token reasoning budget: greedy generation then the decision read;
  measured max |diff| 2.9e-6 on 4 inputs (2 of each set) -> tolerance 1e-4.

Each test starts one backend at a time and closes it before the next.
"""

import numpy as np
import pytest

from guardcal.backends.transformers_backend import TransformersBackend
from guardcal.backends.vllm_backend import VLLMBackend
from guardcal.data.loaders import load_dataset

MAX_INPUT_TOKENS = 128  # long OpenAI Moderation rows are cut identically by both backends
KV = 256 << 20


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    """3 safe + 3 unsafe rows of each dataset (first in file order)."""
    picked = []
    for key in ("openai-moderation:test", "xstest"):
        rows = load_dataset(key, data_dir)
        for label in ("safe", "unsafe"):
            picked += [e.text for e in rows if e.label == label][:3]
    assert len(picked) == 12
    return picked


def _compare(scored, texts, tol, **kwargs):
    common = {"max_input_tokens": MAX_INPUT_TOKENS, **kwargs}
    v, v_ident = scored(VLLMBackend(kv_cache_bytes=KV, **common), texts)
    t, t_ident = scored(TransformersBackend(**common), texts)
    diff = np.abs(v.p_unsafe_norm - t.p_unsafe_norm)
    print(
        f"\n{kwargs}: max |p_unsafe diff| {diff.max():.2e}, mean {diff.mean():.2e}, raw p_safe diff "
        f"{np.abs(v.p_safe - t.p_safe).max():.2e}"
    )
    assert v_ident == t_ident  # no backend-specific identity field: one bundle serves both
    assert v.pred == t.pred
    assert diff.max() < tol, diff
    assert np.abs(v.p_safe - t.p_safe).max() < tol and np.abs(v.p_unsafe - t.p_unsafe).max() < tol
    return diff


def test_float32_direct(vllm_env, scored, texts):
    _compare(scored, texts, 1e-4, dtype="float32")


def test_served_default_dtype_direct(vllm_env, scored, texts):
    _compare(scored, texts, 0.08, dtype="auto")


def test_float32_reasoning(vllm_env, scored, texts):
    # one OpenAI Moderation and one XSTest row keep the two generations cheap
    _compare(scored, [texts[3], texts[6]], 1e-4, dtype="float32", reasoning=True, max_new_tokens=16)
