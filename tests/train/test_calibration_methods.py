"""Exact numbers for the calibration-aware objectives: Brier, RLCR, CAPO (advantage, noise mask, thresholds)."""

import math

import pytest
import torch

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec
from guardcal.errors import ConfigError
from guardcal.train import objectives as obj
from guardcal.train import pairwise as pw
from guardcal.train.config import TrainConfig, build_config
from guardcal.train.rewards import RLCR_NO_DECISION, make_rlcr_reward, rlcr_reward_value
from guardcal.train.strategies import CAPO, RLCR, CalGRPO, GroupBatch, Objective, objective_for

SPEC = LabelSpec(labels=("safe", "unsafe"), surfaces=("Safe", "Unsafe"), token_ids=((10,), (20,)))
PARSER = DecisionParser(SPEC, (7,), frozenset({2}), reasoning=True)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- Brier at the decision token --------------------------------------------------------------


def test_brier_value_and_gradient_hand_worked():
    # two labels, logits (0, log 3) → renormalised p = (0.25, 0.75); gold "safe" was sampled (correct)
    z = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    logp = obj.label_log_probs(z, [[0], [1]], "renorm")
    target = torch.tensor([0])
    brier = obj.brier_loss(logp, target)
    assert brier.item() == pytest.approx(0.75**2 + 0.75**2)
    (grad,) = torch.autograd.grad(brier, z)
    # dL/dp = 2(p - q) = (-1.5, 1.5); dp/dz = diag(p) - pp^T = ±0.1875 → dL/dz = (-0.5625, 0.5625)
    assert grad.tolist()[0] == pytest.approx([-0.5625, 0.5625])
    z2 = z.detach().clone().requires_grad_(True)
    ce = obj.decision_ce(obj.label_log_probs(z2, [[0], [1]], "renorm"), target)
    (grad_ce,) = torch.autograd.grad(ce, z2)
    assert grad_ce.tolist()[0] == pytest.approx([-0.75, 0.75])  # p - q


@pytest.mark.parametrize("kind", ["one-hot", "uniform"])
def test_brier_gradient_vanishes_when_confidently_wrong_ce_does_not(kind):
    d = 9.0  # the wrong label's logit margin: p(wrong) = σ(9) ≈ 0.99988
    z = torch.tensor([[0.0, d]], requires_grad=True)  # label 0 is gold
    target = torch.tensor([0 if kind == "one-hot" else obj.UNIFORM])
    p_wrong = sig(d)
    grads = {}
    for name, fn in (("brier", obj.brier_loss), ("ce", obj.decision_ce)):
        zz = z.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(obj.label_log_probs(zz, [[0], [1]], "renorm"), target), zz)
        grads[name] = g[0, 1].item()  # gradient on the wrong label's logit
    if kind == "one-hot":
        # L = 2(1 - p)² with p = p_gold = 1 - p_wrong: dL/dz_wrong = 4p(1 - p)²; CE: dL/dz_wrong = 1 - p
        p = 1 - p_wrong
        assert grads["brier"] == pytest.approx(4 * p * (1 - p) ** 2, rel=1e-4)
        assert grads["ce"] == pytest.approx(1 - p, rel=1e-4)
    else:
        assert grads["brier"] == pytest.approx(4 * (p_wrong - 0.5) * p_wrong * (1 - p_wrong), rel=1e-4)
        assert grads["ce"] == pytest.approx(p_wrong - 0.5, rel=1e-4)
    assert abs(grads["brier"]) < 1e-3 < 0.4 < abs(grads["ce"])


def test_decision_loss_from_hidden_brier_reads_the_decision_row():
    # identity "LM head": the hidden state at prompt_len + d - 1 is the logit row that predicts token d
    hidden = torch.zeros(2, 5, 3)
    hidden[0, 2 + 1 - 1] = torch.log(torch.tensor([0.2, 0.6, 0.2]))
    hidden[1, 2 + 0 - 1] = torch.log(torch.tensor([0.3, 0.3, 0.4]))
    pos, target = torch.tensor([1, 0]), torch.tensor([1, obj.UNIFORM])
    got = obj.decision_loss_from_hidden(torch.nn.Identity(), hidden, 2, pos, target, [[0], [1]], "full", "brier")
    assert got.item() == pytest.approx(((0.2**2 + 0.4**2) + (0.2**2 + 0.2**2)) / 2)
    ce = obj.decision_loss_from_hidden(torch.nn.Identity(), hidden, 2, pos, target, [[0], [1]], "full", "ce")
    # row 0 correct: -log p(gold = 1) = -log 0.6; row 1 wrong: uniform target over p = (0.3, 0.3) → -log 0.3
    assert ce.item() == pytest.approx((-math.log(0.6) - math.log(0.3)) / 2)
    with pytest.raises(ValueError, match="unknown decision loss"):
        obj.decision_loss_from_hidden(torch.nn.Identity(), hidden, 2, pos, target, [[0], [1]], "full", "hinge")


# --- RLCR ---------------------------------------------------------------------------------------


def test_rlcr_reward_values():
    assert rlcr_reward_value(True, 0.9) == pytest.approx(1 - 0.01)
    assert rlcr_reward_value(True, 1.0) == 1.0
    assert rlcr_reward_value(False, 0.9) == pytest.approx(-0.81)
    assert rlcr_reward_value(False, 0.5) == pytest.approx(-0.25)
    # right answer with calibrated doubt beats a wrong answer at any confidence
    assert rlcr_reward_value(True, 0.5) > rlcr_reward_value(False, 0.0)


def test_rlcr_reward_uses_parser_and_renormalised_q():
    reward = make_rlcr_reward(PARSER, SPEC)
    ids = [[5, 7, 20], [5, 7, 20], [5, 7, 10], [5, 10, 2]]  # unsafe, unsafe, safe, no decision
    lps = [[math.log(0.2), math.log(0.6)]] * 4  # q(unsafe) = 0.75, q(safe) = 0.25 over the labels
    got = reward(["", "", "", ""], ids, ["unsafe", "safe", "unsafe", "safe"], decision_label_logprobs=lps)
    assert got == pytest.approx([1 - 0.25**2, -(0.75**2), -(0.25**2), RLCR_NO_DECISION])
    with pytest.raises(ValueError, match="decision_label_logprobs"):
        reward([""], [[5, 7, 20]], ["safe"])


# --- CAPO ---------------------------------------------------------------------------------------


def _hand_capo(correct, s, tau, g, keep=None):
    keep = keep or [True] * len(s)
    out = []
    for i in range(len(s)):
        if not keep[i]:
            out.append(0.0)
            continue
        partners = [j for j in range(len(s)) if keep[j] and correct[j] != correct[i]]
        if correct[i]:  # -Σ φ'(s_i - s_j) with φ'(t) = -σ(-t/τ)/τ
            out.append(sum(sig(-(s[i] - s[j]) / tau) / tau for j in partners) / g)
        else:  # Σ φ'(s_j' - s_i) over correct j'
            out.append(-sum(sig(-(s[j] - s[i]) / tau) / tau for j in partners) / g)
    return out


def test_capo_advantage_hand_worked_group():
    correct, s = [True, True, False, False], [2.0, 0.0, 1.0, -1.0]
    adv = pw.capo_advantages(torch.tensor(correct), torch.tensor(s, dtype=torch.float64), 4, tau=0.5)
    # i=1 (correct, s=0): σ(2)+σ(-2) = 1 → 1/τ/G = 0.5 ; i=0: (σ(-2)+σ(-6))·2/4
    expected = [(sig(-2) + sig(-6)) / 2, 0.5, -0.5, -(sig(-6) + sig(-2)) / 2]
    assert adv.tolist() == pytest.approx(expected, rel=1e-9)
    assert adv.tolist() == pytest.approx(_hand_capo(correct, s, 0.5, 4), rel=1e-9)
    # the less confident correct rollout gets the bigger push; the more confident wrong one the bigger penalty
    assert adv[1] > adv[0] > 0 > adv[3] > adv[2]


def test_capo_with_linear_surrogate_is_grpo():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    scores = torch.randn(12)
    linear = pw.capo_advantages(r.bool(), scores, 4, surrogate="linear")
    centred = (r.view(-1, 4) - r.view(-1, 4).mean(1, keepdim=True)).view(-1)
    assert linear.tolist() == pytest.approx(centred.tolist())  # Dr. GRPO's r - mean(r), scores ignored
    grpo = obj.group_advantages(r, 4)
    std = r.view(-1, 4).std(1).repeat_interleave(4)
    assert linear.tolist() == pytest.approx((grpo * (std + 1e-4)).tolist(), abs=1e-6)  # TRL's, up to 1/std
    # equal scores and τ = 1/2: the logistic surrogate gives GRPO's advantage too (σ(0)/τ = 1 per pair)
    same = pw.capo_advantages(r.bool(), torch.zeros(12), 4, tau=0.5)
    assert same.tolist() == pytest.approx(centred.tolist())


def test_capo_noise_mask_and_masked_advantage():
    correct = torch.tensor([True, True, False, False, True, False])
    ppl = torch.tensor([3.0, 1.2, 1.01, 1.5, 2.5, 1.05])
    keep = pw.noise_mask(correct, ppl, low=1.05, high=2.5)
    # correct 3.0 > 2.5 dropped (lucky guess); wrong 1.01 < 1.05 dropped (near-correct); bounds are kept
    assert keep.tolist() == [False, True, False, True, True, True]
    s = [2.0, 0.0, 1.0, -1.0]
    k = [True, False, True, True]
    s64 = torch.tensor(s, dtype=torch.float64)
    adv = pw.capo_advantages(torch.tensor([True, True, False, False]), s64, 4, 0.5, torch.tensor(k))
    assert adv.tolist() == pytest.approx([(sig(-2) + sig(-6)) / 2, 0.0, -sig(-2) / 2, -sig(-6) / 2], rel=1e-9)
    assert adv.tolist() == pytest.approx(_hand_capo([True, True, False, False], s, 0.5, 4, k), rel=1e-9)


def test_perplexity_thresholds_are_measured_quantiles_unless_fixed():
    t = pw.PerplexityThresholds(0.25, 0.75)
    assert t.update(torch.arange(1.0, 9.0)) == pytest.approx((2.75, 6.25))  # linear interpolation over 1..8
    assert t.update(torch.tensor([float("nan"), 9.0])) == pytest.approx((3.0, 7.0))  # history 1..9, NaN ignored
    fixed = pw.PerplexityThresholds(0.25, 0.75, fixed_low=1.05, fixed_high=2.5)
    assert fixed.update(torch.arange(1.0, 9.0)) == (1.05, 2.5)
    half = pw.PerplexityThresholds(0.25, 0.75, fixed_high=2.5, history=4)
    assert half.update(torch.arange(1.0, 9.0)) == pytest.approx((5.75, 2.5))  # only the last 4: 5..8


def test_pairwise_auc_and_scores():
    c = torch.tensor([True, True, False, False])
    assert pw.pairwise_auc(c, torch.tensor([2.0, 0.0, 1.0, -1.0]), 4) == 0.75
    assert math.isnan(pw.pairwise_auc(torch.ones(4, dtype=torch.bool), torch.zeros(4), 4))
    logps = torch.tensor([[-1.0, -3.0, -100.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert pw.mean_token_logp(logps, mask).tolist() == [-2.0, -0.5]


def test_capo_objective_masks_and_logs():
    thresholds = pw.PerplexityThresholds(fixed_low=1.05, fixed_high=2.5)
    capo = CAPO(tau=0.5, score="logit", noise_mask=True, thresholds=thresholds)
    assert capo.needs_reference and not capo.needs_policy_logps
    batch = GroupBatch(
        correct=torch.tensor([True, True, False, False]),
        found=torch.ones(4, dtype=torch.bool),
        group_size=4,
        decision_logit=torch.tensor([2.0, 0.0, 1.0, -1.0], dtype=torch.float64),
        reference_ppl=torch.tensor([1.5, 3.0, 2.0, 2.0]),  # the second correct rollout is a lucky guess
    )
    adv = capo.advantages(batch)
    assert adv.tolist() == pytest.approx([(sig(-2) + sig(-6)) / 2, 0.0, -sig(-2) / 2, -sig(-6) / 2], rel=1e-9)
    assert capo.metrics["capo/masked_correct"] == 0.5 and capo.metrics["capo/masked_incorrect"] == 0.0
    assert capo.metrics["capo/group_auc"] == 0.75
    logprob = CAPO(tau=0.5, score="logprob", noise_mask=False, thresholds=thresholds)
    assert logprob.needs_policy_logps and not logprob.needs_reference
    with pytest.raises(ValueError, match="logprob"):
        logprob.advantages(batch)  # no policy log-probs recorded


def test_objective_for_each_method():
    base = {"output": "o"}
    assert type(objective_for(build_config({**base, "method": "grpo"}))) is Objective
    cal = objective_for(build_config({**base, "method": "cal-grpo", "calibration_loss": "brier", "lambda_ce": 0.01}))
    assert isinstance(cal, CalGRPO) and cal.decision_loss == "brier" and cal.lambda_ == 0.01
    assert cal.zero_decision_advantage
    rlcr = objective_for(build_config({**base, "method": "rlcr"}))
    assert isinstance(rlcr, RLCR) and rlcr.advantage == "group"
    assert rlcr.advantages(GroupBatch(torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool), 4)) is None
    capo = objective_for(build_config({**base, "method": "capo", "capo_tau": 0.6, "capo_ppl_high": 2.5}))
    assert isinstance(capo, CAPO) and capo.tau == 0.6 and capo.thresholds.fixed_high == 2.5
    # grpo keeps BNPO exactly as before
    r = torch.tensor([True, False, False, False, True, True, True, False])
    got = Objective("beta").advantages(GroupBatch(r, torch.ones(8, dtype=torch.bool), 4))
    assert got.tolist() == pytest.approx(obj.beta_advantages(r.float(), 4).tolist())


# --- configuration ------------------------------------------------------------------------------


def test_advantage_defaults_per_method():
    assert [TrainConfig(output="o", method=m).advantage for m in ("sft", "grpo", "cal-grpo", "rlcr", "capo")] == [
        "beta",
        "beta",
        "beta",
        "group",
        "pairwise",
    ]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "capo", "advantage": "beta"}, "capo replaces the advantage"),
        ({"method": "grpo", "advantage": "pairwise"}, "pairwise is CAPO's"),
        ({"method": "rlcr", "advantage": "beta"}, "assumes 0/1 rewards"),
        ({"calibration_loss": "hinge"}, "unknown calibration_loss"),
        ({"method": "capo", "capo_tau": 0.0}, "capo_tau must be > 0"),
        ({"method": "capo", "capo_score": "entropy"}, "unknown capo_score"),
        ({"method": "capo", "capo_mask_high_quantile": 1.5}, "quantiles must lie in"),
        ({"method": "capo", "capo_ppl_low": 0.5}, "never below 1"),
        ({"method": "capo", "capo_ppl_low": 3.0, "capo_ppl_high": 2.0}, "swap them"),
    ],
)
def test_bad_method_configs_fail_clearly(fields, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(output="o", **fields)


def test_options_of_another_method_are_refused():
    with pytest.raises(ConfigError, match="calibration_loss only apply to method 'cal-grpo'"):
        build_config({"output": "o", "method": "grpo", "calibration_loss": "brier"})
    with pytest.raises(ConfigError, match="capo_tau only apply to method 'capo'"):
        build_config({"output": "o", "method": "rlcr", "capo_tau": 0.6})
    cfg = build_config({"output": "o", "method": "capo", "capo_noise_mask": False, "capo_score": "logprob"})
    assert (cfg.capo_noise_mask, cfg.capo_score, cfg.capo_tau) == (False, "logprob", 0.5)


def test_cli_flags_for_new_methods(tmp_path, capsys):
    from guardcal.cli import main

    assert main(["train", "--method", "grpo", "--capo-tau", "0.6", "--output", str(tmp_path)]) == 2
    assert "only apply to method 'capo'" in capsys.readouterr().err
    assert main(["train", "--method", "rlcr", "--advantage", "beta", "--output", str(tmp_path)]) == 2
    assert "--advantage group" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any model loads
