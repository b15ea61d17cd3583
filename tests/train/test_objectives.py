"""Exact numbers for the GRPO-family objectives."""

import math

import pytest
import torch

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec
from guardcal.train import objectives as obj
from guardcal.train.rewards import make_decision_reward


def test_group_advantages_match_trl_formula():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = obj.group_advantages(r, 4)
    std = float(torch.tensor([1.0, 0, 0, 0]).std())
    assert a[:4].tolist() == pytest.approx([(1 - 0.25) / (std + 1e-4)] + [(-0.25) / (std + 1e-4)] * 3)
    assert a[4:].tolist() == [0.0] * 4  # a group with one outcome teaches nothing


def test_beta_advantages_hand_worked():
    # two groups of 4: success rates 0.25 and 0.75 → m = 0.5, v = 0.0625
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0])
    common = 0.5 * 0.5 / 0.0625 - 1  # = 3 → a = b = 1.5 → alpha = beta = 1.5
    alpha = 1 + 0.5 * common / 3
    assert obj.beta_parameters(torch.tensor([0.25, 0.75])) == pytest.approx((alpha, alpha))
    norm = math.gamma(2 * alpha) / math.gamma(alpha) ** 2
    dens = norm * (0.25 * 0.75) ** (alpha - 1)  # same density at 0.25 and 0.75 by symmetry
    a = obj.beta_advantages(r, 4)
    expected = [
        0.75 / dens,
        -0.25 / dens,
        -0.25 / dens,
        -0.25 / dens,
        0.25 / dens,
        0.25 / dens,
        0.25 / dens,
        -0.75 / dens,
    ]
    assert a.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(a.view(2, 4).sum(1).abs().max()) < 1e-6  # zero-mean within each group


def test_decision_targets_and_distribution():
    correct = torch.tensor([True, False, False])
    gold = torch.tensor([1, 0, 1])
    found = torch.tensor([True, True, False])
    t = obj.decision_targets(correct, gold, found)
    assert t.tolist() == [1, obj.UNIFORM, obj.NO_DECISION]
    q = obj.target_distribution(t[:2], 2)
    assert q.tolist() == [[0.0, 1.0], [0.5, 0.5]]


def test_ce_value_on_known_distribution():
    # label probs (over the full vocab): row 0 = (0.2, 0.6), row 1 = (0.3, 0.3)
    logp = torch.log(torch.tensor([[0.2, 0.6], [0.3, 0.3], [0.5, 0.5]]))
    target = torch.tensor([1, obj.UNIFORM, obj.NO_DECISION])
    ce = obj.decision_ce(logp, target)
    expected = (-math.log(0.6) + -(0.5 * math.log(0.3) + 0.5 * math.log(0.3))) / 2
    assert ce.item() == pytest.approx(expected)
    brier = obj.brier_loss(logp, target)
    assert brier.item() == pytest.approx(((0.2**2 + 0.4**2) + (0.2**2 + 0.2**2)) / 2)
    assert obj.decision_ce(logp, torch.full((3,), obj.NO_DECISION)).item() == 0.0


def test_label_log_probs_full_and_renorm():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))  # already normalised
    full = obj.label_log_probs(logits, [[0, 1], [2]], "full").exp()
    assert full.tolist()[0] == pytest.approx([0.3, 0.3])
    renorm = obj.label_log_probs(logits, [[0, 1], [2]], "renorm").exp()
    assert renorm.tolist()[0] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="CE variant"):
        obj.label_log_probs(logits, [[0], [1]], "other")


def test_reward_uses_the_parser():
    spec = LabelSpec(labels=("safe", "unsafe"), surfaces=("Safe", "Unsafe"), token_ids=((10,), (20,)))
    reward = make_decision_reward(DecisionParser(spec, (7,), frozenset({2}), reasoning=True))
    ids = [[5, 7, 10], [5, 7, 20], [5, 10, 2], [7, 2, 10]]
    assert reward(["", "", "", ""], ids, ["safe", "safe", "safe", "safe"]) == [1.0, 0.0, 0.0, 0.0]


def test_advantage_zeroed_at_decision_only():
    adv = torch.tensor([0.5, -1.0, 2.0])
    pos = torch.tensor([3, 0, -1])
    per_token = obj.zero_at_decision(adv, pos, 5)
    assert per_token.tolist() == [
        [0.5, 0.5, 0.5, 0.0, 0.5],
        [0.0, -1.0, -1.0, -1.0, -1.0],
        [2.0, 2.0, 2.0, 2.0, 2.0],  # no decision token: untouched
    ]
    assert adv.tolist() == [0.5, -1.0, 2.0]  # the input is not modified


def test_ce_gradient_reaches_lora_weights(default_model):
    """The CE term alone (no policy loss) sends gradient into the LoRA weights."""
    from peft import LoraConfig, get_peft_model

    from guardcal.models.loading import load_model

    base = load_model("default").model
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.train()
    tok = default_model.tokenizer
    spec = LabelSpec.from_tokenizer(tok)
    prompt = torch.tensor([tok.encode('Input:\n"hi"\n\nClassification:')])
    completion = torch.tensor([[spec.ids_for("safe")[1]]])
    captured = []
    decoder = model.get_base_model().get_decoder()
    hook = decoder.register_forward_hook(lambda _m, _i, o: captured.append(o[0]))
    model(torch.cat([prompt, completion], 1))
    hook.remove()
    ce = obj.decision_loss_from_hidden(
        model.get_base_model().get_output_embeddings(),
        captured[-1],
        prompt.size(1),
        torch.tensor([0]),
        torch.tensor([0]),
        [list(x) for x in spec.token_ids],
    )
    ce.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert max(float(g.abs().max()) for g in grads) > 0
    frozen = [p for n, p in model.named_parameters() if "lora" not in n]
    assert all(p.grad is None for p in frozen)
