"""The guard recipe's parts (issue 21): profile, class-balanced loss, upper-layer LoRA, per-class recall."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from guardcal.core.examples import Example
from guardcal.errors import ConfigError
from guardcal.train.callbacks import class_recall
from guardcal.train.config import PROFILE_VALUES, TrainConfig, build_config
from guardcal.train.runner import _common_args, lora_layers


def test_guard_profile_resolves_and_reaches_the_trainer_args() -> None:
    cfg = build_config({"method": "sft", "profile": "guard", "output": "o"})
    want = PROFILE_VALUES["guard"]["sft"]
    assert (cfg.class_balance, cfg.lora_first_layer, cfg.max_input_tokens) == (
        want["class_balance"],
        want["lora_first_layer"],
        want["max_input_tokens"],
    )
    args = _common_args(cfg)
    assert args["warmup_steps"] == cfg.warmup_ratio > 0
    assert args["train_sampling_strategy"] == "group_by_length"
    assert args["save_total_limit"] == cfg.keep_checkpoints
    # the GRPO family takes the guard profile too, without the SFT-only loss weights
    grpo = build_config({"method": "grpo", "profile": "guard", "output": "o"})
    assert grpo.class_balance == "none" and grpo.max_input_tokens == 256


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "grpo", "class_balance": "weight"}, "class_balance weighs the SFT loss"),
        ({"class_balance": "resample"}, "unknown class_balance"),
        ({"lr_scheduler": "step"}, "unknown lr_scheduler"),
        ({"lora_first_layer": -1}, "lora_first_layer must be >= 0"),
        ({"warmup_ratio": 1.0}, "warmup_ratio must be in"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ],
)
def test_bad_recipe_fields_fail_clearly(fields: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(output="o", **{"method": "sft", **fields})


def test_lora_layers_are_the_upper_ones() -> None:
    class Model:
        class config:  # noqa: N801 - mimics a transformers config attribute
            num_hidden_layers = 30

    assert lora_layers(Model(), 0) is None
    assert lora_layers(Model(), 15) == list(range(15, 30))
    with pytest.raises(ConfigError, match="leaves no layer"):
        lora_layers(Model(), 30)


def test_class_weights_invert_the_prior_with_mean_one(tokenizer) -> None:
    from guardcal.core.labels import LabelSpec
    from guardcal.train.rows import decision_token_id, sft_class_weights

    spec = LabelSpec.from_tokenizer(tokenizer)
    examples = [Example(str(i), "t", "unsafe" if i < 3 else "safe") for i in range(10)]
    weights = sft_class_weights(examples, tokenizer, spec)
    w_safe = weights[decision_token_id(tokenizer, spec, "safe")]
    w_unsafe = weights[decision_token_id(tokenizer, spec, "unsafe")]
    assert w_unsafe == pytest.approx(10 / 6) and w_safe == pytest.approx(10 / 14)
    assert (7 * w_safe + 3 * w_unsafe) / 10 == pytest.approx(1.0)  # the loss scale is unchanged on average


class _TinyLM(torch.nn.Module):
    """A decoder (embedding) and an LM head over a 4-token vocabulary, enough for the decision loss."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(4, 3)
        self.head = torch.nn.Linear(3, 4, bias=False)

    def get_decoder(self):  # type: ignore[no-untyped-def]
        return lambda input_ids, attention_mask: SimpleNamespace(last_hidden_state=self.embed(input_ids))

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def test_trainer_loss_weighs_each_row_by_its_gold_label() -> None:
    from guardcal.train.sft import DecisionSFTTrainer

    torch.manual_seed(0)
    model = _TinyLM()
    # rows "prompt token, decision token": token 2 = Safe, 3 = Unsafe; only the decision is labelled
    ids = torch.tensor([[0, 2], [1, 2], [0, 3]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([[-100, 2]] * 2 + [[-100, 3]]),
    }

    def loss(weights: dict[int, float] | None) -> torch.Tensor:
        trainer = SimpleNamespace(
            accelerator=SimpleNamespace(unwrap_model=lambda m: m),
            args=SimpleNamespace(bf16=False),
            class_weights=weights,
        )
        return DecisionSFTTrainer.compute_loss(trainer, model, inputs)  # type: ignore[arg-type]

    logits = model.head(model.embed(ids[:, 0]))
    ce = torch.nn.functional.cross_entropy(logits, ids[:, 1], reduction="none")
    assert loss(None).item() == pytest.approx(ce.mean().item(), rel=1e-6)
    w = {2: 0.75, 3: 1.5}
    assert loss(w).item() == pytest.approx(((ce * torch.tensor([0.75, 0.75, 1.5])).sum() / 3).item(), rel=1e-6)


def test_class_recall_shows_a_collapsed_policy() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert class_recall(y, np.zeros(5, dtype=bool)) == {"eval/recall_safe": 1.0, "eval/recall_unsafe": 0.0}
    assert class_recall(y, np.array([0, 1, 0, 1, 0], dtype=bool)) == {
        "eval/recall_safe": pytest.approx(2 / 3),
        "eval/recall_unsafe": 0.5,
    }
    assert class_recall(np.zeros(3), np.zeros(3, dtype=bool))["eval/recall_unsafe"] is None
