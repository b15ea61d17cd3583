"""GRPO and calibration-aware GRPO on top of TRL's ``GRPOTrainer``.

``GuardGRPOTrainer`` adds, to stock GRPO:

- guardcal's decision parser on every rollout (decision position, correctness,
  parse rate logged as ``decision/*``);
- BNPO advantages (``advantage="beta"``), recomputed from the parsed rewards
  over the whole generation batch;
- for ``cal-grpo``: per-token advantages with the decision position set to 0,
  plus ``λ · L_CE`` at the decision position (``loss/policy`` and ``loss/ce``
  logged separately).

CE normalisation (what λ multiplies): the mean over the micro-batch's
completions that have a decision token of ``-Σ_c q(c) log p(c | x, y_<d)``,
divided by the gradient-accumulation steps exactly like TRL's policy term.
The decision-position hidden state is captured by a forward hook on the
decoder during TRL's own forward pass, and only those rows go through the LM
head, so the extra cost is one (n, V) matmul.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec
from guardcal.train import objectives as obj


class GuardGRPOTrainer(GRPOTrainer):
    def __init__(
        self,
        *args: Any,
        parser: DecisionParser,
        spec: LabelSpec,
        calibration_aware: bool = False,
        lambda_ce: float = 0.001,
        ce_variant: str = "full",
        advantage: str = "beta",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.parser = parser
        self.spec = spec
        self.calibration_aware = calibration_aware
        self.lambda_ce = lambda_ce
        self.ce_variant = ce_variant
        self.advantage_mode = advantage

    # --- rollouts -------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        ids, mask = out["completion_ids"], out["completion_mask"]
        found, pos, pred = [], [], []
        for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
            hit = self.parser.find([t for t, keep in zip(row, m, strict=True) if keep])
            found.append(hit is not None)
            pos.append(hit[0] if hit else -1)
            pred.append(self.spec.labels.index(hit[1]) if hit else -1)
        device = ids.device
        gold = torch.tensor([self.spec.labels.index(x["label"]) for x in inputs], device=device)
        found_t = torch.tensor(found, device=device)
        correct = found_t & (torch.tensor(pred, device=device) == gold)
        out["decision_pos"] = torch.tensor(pos, device=device)
        out["decision_target"] = obj.decision_targets(correct, gold, found_t)
        if self.advantage_mode == "beta":
            out["advantages"] = self._beta_advantages(correct.float())
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["decision/parse_rate"].append(found_t.float().mean().item())
        self._metrics[mode]["decision/accuracy"].append(correct.float().mean().item())
        return out

    def _beta_advantages(self, local_rewards: torch.Tensor) -> torch.Tensor:
        everything = self.accelerator.gather(local_rewards)
        group = self.num_generations if self.model.training else self.num_generations_eval
        adv = obj.beta_advantages(everything, group)
        n = local_rewards.numel()
        start = self.accelerator.process_index * n
        return adv[start : start + n].to(local_rewards.device)

    # --- loss -----------------------------------------------------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if not self.calibration_aware:
            return super()._compute_loss(model, inputs)
        pos, target = inputs["decision_pos"], inputs["decision_target"]
        per_token = obj.zero_at_decision(inputs["advantages"], pos, inputs["completion_ids"].size(1))
        captured: list[torch.Tensor] = []
        base = self.accelerator.unwrap_model(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        hook = base.get_decoder().register_forward_hook(lambda _m, _i, o: captured.append(o[0]))
        try:
            policy = super()._compute_loss(model, {**inputs, "advantages": per_token})
        finally:
            hook.remove()
        ce = obj.decision_ce_from_hidden(
            base.get_output_embeddings(),
            captured[-1],
            inputs["prompt_ids"].size(1),
            pos,
            target,
            [list(x) for x in self.spec.token_ids],
            self.ce_variant,
        )
        mode = "train" if self.model.training else "eval"
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        self._metrics[mode]["loss/policy"].append(policy.item() * scale)
        self._metrics[mode]["loss/ce"].append(ce.item())
        return policy + self.lambda_ce * ce / scale
