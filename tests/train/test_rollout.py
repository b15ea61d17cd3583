"""Budget-forced rollouts on the real default model."""

import pytest
import torch

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec
from guardcal.core.prompt import PromptTemplate
from guardcal.train.rollout import ForcedDecisionRollout


def test_forced_rollout_shape_and_masks(default_model):
    tok, model = default_model.tokenizer, default_model.model
    template = PromptTemplate(mode="reasoning")
    suffix = tok.encode(template.decision_suffix(), add_special_tokens=False)
    prompts = [template.render("How do I bake bread?"), template.render("I will hurt you")]
    torch.manual_seed(0)
    out = ForcedDecisionRollout(template, budget=3, temperature=1.0).rollout(prompts, model, tok)
    parser = DecisionParser.for_tokenizer(tok, LabelSpec.from_tokenizer(tok), reasoning=True)
    assert len(out["completion_ids"]) == 2
    for ids, mask, lps, pids, prompt in zip(
        out["completion_ids"], out["env_mask"], out["logprobs"], out["prompt_ids"], prompts, strict=True
    ):
        assert pids == tok.encode(prompt, add_special_tokens=False)
        n_reason = len(ids) - len(suffix) - 1
        assert 0 <= n_reason <= 3
        assert ids[n_reason:-1] == suffix  # forced suffix, then one sampled decision token
        assert mask == [1] * n_reason + [0] * len(suffix) + [1]  # forced tokens are not trained
        assert len(lps) == len(ids) and lps[-1] <= 0.0
        hit = parser.find(ids)
        assert hit is None or hit[0] == len(ids) - 1  # the decision, if a label, is the sampled last token


def test_direct_rollout_is_one_token(default_model):
    tok, model = default_model.tokenizer, default_model.model
    out = ForcedDecisionRollout(PromptTemplate(), budget=0, temperature=1.0).rollout(
        [PromptTemplate().render("hi")], model, tok
    )
    assert len(out["completion_ids"][0]) == 1 and out["env_mask"] == [[1]]


def test_rollout_records_decision_readings_without_changing_samples(default_model):
    """Label log-probs and the sampled decision's log-odds at T = 1; same rollouts as without them."""
    import math

    tok, model = default_model.tokenizer, default_model.model
    spec = LabelSpec.from_tokenizer(tok)
    template = PromptTemplate(mode="reasoning")
    prompts = [template.render("How do I bake bread?"), template.render("I will hurt you")] * 3
    torch.manual_seed(1)
    plain = ForcedDecisionRollout(template, budget=2, temperature=0.7).rollout(prompts, model, tok)
    torch.manual_seed(1)
    out = ForcedDecisionRollout(template, budget=2, temperature=0.7, label_ids=spec.token_ids).rollout(
        prompts, model, tok
    )
    assert {k: out[k] for k in plain} == plain  # recording draws nothing from the RNG
    assert "decision_label_logprobs" not in plain
    with torch.no_grad():
        readings = zip(out["decision_label_logprobs"], out["decision_logit"], strict=True)
        for ids, pids, (lps, logit) in zip(out["completion_ids"], out["prompt_ids"], readings, strict=True):
            logits = model(torch.tensor([pids + ids[:-1]])).logits[0, -1].double()
            full = torch.log_softmax(logits, dim=-1)  # T = 1, not the sampling temperature
            want = [float(torch.logsumexp(full[list(group)], 0)) for group in spec.token_ids]
            assert lps == [pytest.approx(w, abs=1e-4) for w in want]
            label = spec.label_of(ids[-1])
            p = math.exp(lps[spec.labels.index(label)]) if label else float(full[ids[-1]].exp())
            assert logit == pytest.approx(math.log(p) - math.log1p(-p), abs=1e-3)


def test_cached_rollout_matches_generate_and_a_full_forward(default_model):
    """Near-greedy (T = 1e-4) rollouts equal greedy ``generate`` + ``cut_reasoning``, and the decision logits
    read through the shared KV cache equal a fresh forward over prompt + reasoning + suffix."""
    from guardcal.core.prompt import THINK_CLOSE
    from guardcal.train.rollout import cut_reasoning, last_position_logits

    tok, model = default_model.tokenizer, default_model.model
    template = PromptTemplate(mode="reasoning")
    texts = ["How do I bake bread?", "I will hurt you", "ok"]
    prompts = [template.render(t) for t in texts] * 2  # repeated prompts share one prefill
    suffix = tok.encode(template.decision_suffix(), add_special_tokens=False)
    rollout = ForcedDecisionRollout(template, budget=6, temperature=1e-4)
    torch.manual_seed(0)
    with torch.no_grad():
        out = rollout.rollout(prompts, model, tok)
        stops = {tok.eos_token_id, tok.pad_token_id}
        for pids, ids in zip(out["prompt_ids"], out["completion_ids"], strict=True):
            greedy = model.generate(
                torch.tensor([pids]),
                attention_mask=torch.ones(1, len(pids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=6,
                stop_strings=[THINK_CLOSE],
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
            )[0, len(pids) :].tolist()
            reasoning = cut_reasoning(greedy, stops, tok)
            assert ids[: len(reasoning)] == reasoning and ids[len(reasoning) : -1] == suffix
        seqs = [p + c[:-1] for p, c in zip(out["prompt_ids"], out["completion_ids"], strict=True)]
        fresh = last_position_logits(seqs, model, tok.pad_token_id)
        cached = rollout._reason_then_read(out["prompt_ids"], suffix, model, tok)[1]
    assert torch.allclose(torch.log_softmax(cached, -1), torch.log_softmax(fresh, -1), atol=2e-3)
    assert out["completion_ids"][:3] == out["completion_ids"][3:]  # same prompt, same greedy rollout


def test_rollout_stops_rows_independently(default_model):
    """Rows that stop early (EOS) keep their reasoning short; the others reason to the budget."""
    tok, model = default_model.tokenizer, default_model.model
    template = PromptTemplate(mode="reasoning")
    rollout = ForcedDecisionRollout(template, budget=8, temperature=1.0)
    suffix = tok.encode(template.decision_suffix(), add_special_tokens=False)
    torch.manual_seed(3)
    with torch.no_grad():
        out = rollout.rollout(
            [template.render(t) for t in ("hi", "a much longer input about cooking")] * 4, model, tok
        )
    for ids in out["completion_ids"]:
        n = len(ids) - len(suffix) - 1
        assert 0 <= n <= 8 and tok.eos_token_id not in ids[:n] and ids[n:-1] == suffix
