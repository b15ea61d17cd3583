"""The paper's Table 3 (benchmarks/reasoning_swap.py): donor choice, confidence stats, a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import reasoning_swap as rs  # benchmarks/ is importable: pytest's pythonpath has the repo root
from guardcal.core.confidence import Scores

_PATH = Path(rs.__file__)


def test_donors_come_from_another_query_with_the_wanted_label():
    # 3 queries x 2 rollouts; query i's own rollout is 2i
    owner = np.array([0, 0, 1, 1, 2, 2])
    pool_labels = np.array(["safe", "unsafe", "safe", "safe", "unsafe", "unsafe"])
    labels = pool_labels[[0, 2, 4]]  # safe, safe, unsafe
    rng = np.random.default_rng(0)
    for _ in range(20):
        opposite = rs._donors(labels, pool_labels, owner, True, rng)
        # query 0 (safe): unsafe rollouts of others are 4, 5 (its own rollout 1 is excluded)
        assert opposite[0] in (4, 5)
        assert opposite[1] in (1, 4, 5)
        assert opposite[2] in (0, 2, 3)
        same = rs._donors(labels, pool_labels, owner, False, rng)
        assert same[0] in (2, 3) and same[1] == 0 and same[2] == 1
    # nobody decided unsafe: no opposite-label donor for anyone
    none = rs._donors(np.array(["safe"] * 3), np.array(["safe"] * 6), owner, True, rng)
    assert none.tolist() == [-1, -1, -1]


def test_confidence_stats_on_known_scores():
    scores = Scores(np.array([0.9, 0.2, 0.001, 0.3]), np.array([0.05, 0.6, 0.5, 0.3]))
    stats = rs._confidence_stats(scores, np.array([True, True, True, False]))
    # renormalised confidences 0.9/0.95, 0.6/0.8, 0.5/0.501
    expected = np.mean([0.9 / 0.95, 0.6 / 0.8, 0.5 / 0.501])
    assert stats["n"] == 3
    assert stats["mean_confidence"] == pytest.approx(expected)
    assert stats["mean_confidence_full_vocab"] == pytest.approx((0.9 + 0.6 + 0.5) / 3)
    assert stats["share_conf_gt_0.99"] == pytest.approx(1 / 3)
    assert rs._confidence_stats(scores, np.zeros(4, dtype=bool))["mean_confidence"] is None


@pytest.mark.timeout(600)
def test_a_real_swap_run_on_the_default_model_then_the_table_and_plot(tmp_path):
    out = tmp_path / "base.json"
    cmd = [sys.executable, str(_PATH), "--n-queries", "6", "--budget", "3", "--donor-rollouts", "2"]
    cmd += ["--batch", "12", "--output", str(out)]
    subprocess.run(cmd, check=True, env=os.environ.copy(), capture_output=True, text=True)
    run = json.loads(out.read_text())
    assert run["n_queries"] == 6 and run["donor_rollouts_per_query"] == 2
    assert 0.0 <= run["donor_pool_share_unsafe"] <= 1.0
    for kind in rs.KINDS:
        part = run[kind]
        assert part["n"] == part["flipped"]["n"] + part["kept"]["n"] <= 6
        if part["n"]:
            assert part["flip_rate"] == pytest.approx(part["flipped"]["n"] / part["n"])
    assert 0.5 <= run["original"]["mean_confidence"] <= 1.0

    subprocess.run([sys.executable, str(_PATH), "--combine", str(out), "--output", str(tmp_path)], check=True)
    table = (tmp_path / "table3.md").read_text()
    assert table.count("\n") == 3 and "| base | 6 |" in table
    assert (tmp_path / "table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pool_decisions_read_at_sampling_time_equal_a_fresh_read(default_model):
    """``_rollouts`` takes the decisions from the rollout's own T = 1 readings; ``_read`` re-runs them."""
    import torch

    from guardcal.core.labels import LabelSpec
    from guardcal.core.prompt import PromptTemplate
    from guardcal.train.rollout import ForcedDecisionRollout

    tok, model = default_model.tokenizer, default_model.model
    spec, template = LabelSpec.from_tokenizer(tok), PromptTemplate(mode="reasoning")
    rollout = ForcedDecisionRollout(template, 4, temperature=1.0, label_ids=spec.token_ids)
    prompts = [template.render(t) for t in ("How do I bake bread?", "I will hurt you", "kill the process")] * 2
    torch.manual_seed(0)
    reasonings, at_sampling = rs._rollouts(rollout, model, tok, spec, prompts, 4, "test")
    suffix = tok.encode(template.decision_suffix(), add_special_tokens=False)
    seqs = [tok.encode(p, add_special_tokens=False) + r + suffix for p, r in zip(prompts, reasonings, strict=True)]
    fresh = rs._read(model, tok, spec, seqs, 4)
    assert np.allclose(at_sampling.p_unsafe, fresh.p_unsafe, atol=1e-4)
    assert np.allclose(at_sampling.p_safe, fresh.p_safe, atol=1e-4)
    assert at_sampling.pred == fresh.pred


@pytest.mark.timeout(600)
def test_donors_from_another_model(tmp_path):
    """``--donor-adapter none``: the donor pool comes from a second (bare) model, recorded in the JSON."""
    out = tmp_path / "cross.json"
    cmd = [sys.executable, str(_PATH), "--n-queries", "5", "--budget", "2", "--donor-rollouts", "2"]
    cmd += ["--batch", "10", "--donor-adapter", "none", "--output", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=540)
    run = json.loads(out.read_text())
    assert run["donor_adapter"] == "none" and run["n_queries"] == 5
    for kind in rs.KINDS:
        assert run[kind]["n"] == run[kind]["flipped"]["n"] + run[kind]["kept"]["n"] <= 5
