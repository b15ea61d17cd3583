"""Budget-forced rollouts on the real default model."""

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
