"""scripts/soup_adapters.py: the soup's weight delta is exactly the weighted average of the adapters' deltas,
read back through PEFT (rank_pattern / alpha_pattern included)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soup_adapters.py"
_spec = importlib.util.spec_from_file_location("soup_adapters", SCRIPT)
assert _spec is not None and _spec.loader is not None
soup_adapters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soup_adapters)


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _random_adapter(folder: Path, seed: int, *, targets: list[str] | None = None) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets or ["q_proj", "v_proj", "lm_head"],
        rank_pattern={"lm_head": 2}, alpha_pattern={"lm_head": 2}, lora_dropout=0.0,
    )  # fmt: skip
    model = get_peft_model(_tiny_model(), config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)  # B is zero at init: give every delta a value
    model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)


def _merged_weights(folder: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    merged = PeftModel.from_pretrained(_tiny_model(), str(folder)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def test_the_soup_adds_the_weighted_average_of_the_deltas(tmp_path: Path):
    _random_adapter(tmp_path / "a", seed=1)
    _random_adapter(tmp_path / "b", seed=2)
    assert soup_adapters.main(["--adapter", f"{tmp_path / 'a'}=0.3", "--adapter", f"{tmp_path / 'b'}=0.7",
                               "--out", str(tmp_path / "soup")]) == 0  # fmt: skip
    config = json.loads((tmp_path / "soup" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["rank_pattern"]) == (8, 8, {"lm_head": 4})

    base = {k: v.detach().clone() for k, v in _tiny_model().state_dict().items()}
    a, b, s = (_merged_weights(tmp_path / n) for n in ("a", "b", "soup"))
    changed = [k for k in base if not torch.allclose(a[k], base[k])]
    assert any("lm_head" in k for k in changed) and any("q_proj" in k for k in changed)
    for key in base:
        expected = base[key] + 0.3 * (a[key] - base[key]) + 0.7 * (b[key] - base[key])
        torch.testing.assert_close(s[key], expected, atol=1e-5, rtol=1e-5)

    manifest = json.loads((tmp_path / "soup" / "soup.json").read_text())
    assert [src["weight"] for src in manifest["sources"]] == [0.3, 0.7]
    assert all(len(src["sha256"]) == 64 for src in manifest["sources"])


def test_weights_must_average(tmp_path: Path):
    _random_adapter(tmp_path / "a", seed=1)
    _random_adapter(tmp_path / "b", seed=2)
    with pytest.raises(ValueError, match="sum to 1"):
        soup_adapters.soup([(tmp_path / "a", 0.5), (tmp_path / "b", 0.6)])
    with pytest.raises(ValueError, match="at least two"):
        soup_adapters.soup([(tmp_path / "a", 1.0)])


def test_adapters_of_other_targets_are_refused(tmp_path: Path):
    _random_adapter(tmp_path / "a", seed=1)
    _random_adapter(tmp_path / "b", seed=2, targets=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="targets other modules"):
        soup_adapters.soup([(tmp_path / "a", 0.5), (tmp_path / "b", 0.5)])


def test_a_weight_that_is_not_a_number_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    _random_adapter(tmp_path / "a", seed=1)
    with pytest.raises(SystemExit):
        soup_adapters.main(["--adapter", f"{tmp_path / 'a'}=half", "--adapter", f"{tmp_path / 'a'}=0.5",
                            "--out", str(tmp_path / "soup")])  # fmt: skip
    assert "'half' is not a number" in capsys.readouterr().err
