"""Load any causal LM (the default, a hub id or a local folder) plus a PEFT adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardcal.assets import DEFAULT, DEFAULT_ADAPTER
from guardcal.core.pooled_head import FILENAME as HEAD_FILE
from guardcal.core.pooled_head import PooledHead
from guardcal.errors import ModelError
from guardcal.models.default import DEFAULT_MODEL, default_model_dir, guardcal_home

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")


def resolve_model(model: str) -> str:
    """``"default"`` → the materialised default folder; anything else unchanged."""
    if model == DEFAULT_MODEL:
        return str(default_model_dir())
    return model


def resolve_adapter(adapter: str | Path) -> Path:
    """``"default"`` → the adapter shipped in the package; anything else is a folder."""
    if str(adapter) == DEFAULT:
        if not (DEFAULT_ADAPTER / "adapter_config.json").is_file():
            raise ModelError("no default adapter is shipped in this build; pass --adapter DIR from guardcal train")
        return DEFAULT_ADAPTER
    return Path(adapter)


def check_adapter_dir(adapter: str | Path) -> Path:
    """An adapter folder holds a PEFT adapter (``adapter_config.json`` and safetensors weights), a
    pooled head (``pooled_head.safetensors``, ``core.pooled_head``), or both."""
    path = resolve_adapter(adapter)
    if not (path / "adapter_config.json").is_file():
        if (path / HEAD_FILE).is_file():
            return path
        raise ModelError(
            f"{path} is not a PEFT adapter folder (no adapter_config.json) nor a pooled head's "
            f"(no {HEAD_FILE}); pass the output directory written by `guardcal train`"
        )
    if not (path / "adapter_model.safetensors").is_file():
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found pickle files {pickled}, which guardcal refuses to load)" if pickled else ""
        raise ModelError(
            f"{path} has no adapter_model.safetensors{hint}; re-save the adapter with "
            "save_pretrained(..., safe_serialization=True)"
        )
    return path


@dataclass
class LoadedModel:
    """A ready-to-score model and tokenizer, with where they came from."""

    model: Any
    tokenizer: Any
    model_id: str
    adapter: str | None
    #: the adapter folder's pooled head: the guard reads it instead of the decision token
    head: PooledHead | None = None


def has_lora(adapter: str | Path) -> bool:
    """True when the adapter folder holds PEFT weights (not only a pooled head)."""
    return _has_lora(check_adapter_dir(adapter))


def _has_lora(checked: Path) -> bool:
    return (checked / "adapter_config.json").is_file()


def load_head(adapter: str | Path | None) -> PooledHead | None:
    """The adapter folder's pooled head, or None (no adapter, or a LoRA-only one)."""
    return None if adapter is None else _load_head(check_adapter_dir(adapter))


def _load_head(checked: Path) -> PooledHead | None:
    path = checked / HEAD_FILE
    return PooledHead.load(path) if path.is_file() else None


def _local_only(path: str) -> bool:
    return Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1"


def load_tokenizer(model: str) -> Any:
    """The tokenizer, left-padded for last-position reads, with a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=_local_only(path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model: str = DEFAULT_MODEL,
    adapter: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> LoadedModel:
    """Load ``model`` (and ``adapter``) for inference in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {DTYPES}")
    path = resolve_model(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), local_files_only=_local_only(path)
        )
    except OSError as exc:
        raise ModelError(
            f"cannot load model {model!r}: {exc}. Pass --model default, a local folder, "
            "or a Hugging Face id that is in the local cache"
        ) from exc
    folder = check_adapter_dir(adapter) if adapter is not None else None
    if folder is not None and _has_lora(folder):
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(folder))
    head = _load_head(folder) if folder is not None else None
    if head is not None:
        check_head_fits(head, lm.config)
    lm.to(torch.device(device)).eval()
    return LoadedModel(lm, load_tokenizer(model), model, str(adapter) if adapter else None, head)


def check_head_fits(head: PooledHead, config: Any) -> None:
    """A head's layers and width must exist in the model it is served with."""
    layers, width = int(config.num_hidden_layers), int(config.hidden_size)
    wrong = [layer for _, layer in head.readouts if not 0 <= layer <= layers]
    if wrong or head.hidden_size != width:
        raise ModelError(
            f"the pooled head reads layers {[layer for _, layer in head.readouts]} of width {head.hidden_size}, "
            f"but the model has layers 0..{layers} of width {width}; serve the head with the model it was fitted on"
        )


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def model_identity(model: str) -> str:
    """A stable id for bundles, bound to the weights rather than to the name typed.

    The default model's id names its weights' digest. Any other model that is a local folder (or a
    Hugging Face id found in the local cache) is identified by :func:`weights_fingerprint`, so a
    bundle fitted on one set of weights is refused for another under the same path, and accepted
    for the same weights under another path. A model that cannot be found locally keeps its name.
    """
    if model == DEFAULT_MODEL:
        return "default:" + default_model_dir().name
    folder = local_model_dir(model)
    return model if folder is None else "weights:" + weights_fingerprint(folder)


def local_model_dir(model: str) -> Path | None:
    """The folder holding ``model``'s weights: the path itself, or its snapshot in the HF cache."""
    path = Path(model)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not a repo id, or not cached: nothing local to fingerprint
        return None


def weights_fingerprint(folder: Path) -> str:
    """sha256 over ``config.json`` and every ``*.safetensors`` file (sorted by name) of a model folder.

    Hashing multi-GB weights takes a while, so the digest is remembered per (path, size, mtime) in
    ``$GUARDCAL_HOME/weights-fingerprints.json``; a changed file is hashed again.
    """
    import hashlib
    import json

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} holds no *.safetensors weights; guardcal loads only safetensors (no pickle)")
    files = [f for f in (folder / "config.json",) if f.is_file()] + files
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    memo_path = guardcal_home() / "weights-fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return str(memo[key])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = "sha256:" + h.hexdigest()[:16]
    memo = memo if isinstance(memo, dict) else {}
    memo[key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        memo_path.write_text(json.dumps(memo, indent=1), encoding="utf-8")
    except OSError:
        pass  # a read-only home only costs hashing again next time
    return digest


def adapter_fingerprint(adapter: str | Path | None) -> str | None:
    """sha256 over the adapter's config and safetensors weights, and its pooled head when it has one
    (None without an adapter). A LoRA-only folder hashes as it did before heads existed."""
    if adapter is None:
        return None
    import hashlib

    path = check_adapter_dir(adapter)
    h = hashlib.sha256()
    names = ("adapter_config.json", "adapter_model.safetensors") if _has_lora(path) else ()
    for name in (*names, *((HEAD_FILE,) if (path / HEAD_FILE).is_file() else ())):
        with (path / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]
