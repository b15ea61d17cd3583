"""The one GRPO-family trainer, on top of TRL's ``GRPOTrainer``.

``GuardGRPOTrainer`` adds, to stock GRPO:

- guardcal's decision parser on every rollout (decision position, correctness,
  parse rate logged as ``decision/*``), and the decision-token readings the
  rollout recorded at generation time (``decision/q_mean``: the sampled
  label's probability renormalised over the labels; ``decision/q_gt_0.99``:
  the share of parsed rollouts above 0.99);
- an ``Objective`` (``strategies.py``) that picks the reward, the advantage
  (BNPO, TRL's group advantage, or CAPO's pairwise one, computed over the
  whole generation batch) and an optional extra loss at the decision token;
- for ``cal-grpo``: per-token advantages with the decision position set to 0,
  plus ``λ · L`` at the decision position, L = CE (the paper) or Brier
  (``loss/policy`` and ``loss/ce`` or ``loss/brier`` logged separately);
- for ``capo``: when asked, the policy's mean token log-prob of each response
  and the frozen base model's perplexity of it (adapter disabled), each one
  extra forward pass per generation batch under ``no_grad``.

Decision-loss normalisation (what λ multiplies): the mean over the
micro-batch's completions that have a decision token of the per-rollout loss,
divided by the gradient-accumulation steps exactly like TRL's policy term.
The decision-position hidden state is captured by a forward hook on the
decoder during TRL's own forward pass, and only those rows go through the LM
head, so the extra cost is one (n, V) matmul.

Off CUDA/XPU, TRL's fused LM head scores every position of prompt + completion (fixed tile
shapes, for compilers like Neuron's) and masks the prompt afterwards; on a CPU that is ~7× the
LM-head work of the completion tokens (≈ 25 s of a 122 s cpu-small step, profiled).
``score_completion_positions_only`` makes it score only the labelled positions on a CPU too,
as it already does on CUDA; the log-probs at those positions are the same.

Memory: with ``loss_row_chunk`` set, a micro-batch's forward and backward run a few completions
at a time (``_compute_loss``), each chunk's loss scaled to the micro-batch's normalisers, so the
gradient is the micro-batch's and only one chunk's activations are alive at a time (a cpu-small
step's peak RSS: ``benchmarks/grpo_memory.py``). A LoRA on ``lm_head`` (the shipped guard's
readout) trains too: see ``guardcal/train/lm_head.py``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from trl import GRPOTrainer

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec
from guardcal.train import objectives as obj
from guardcal.train import pairwise
from guardcal.train.lm_head import bare_head_for_trl, merged_lora_head
from guardcal.train.strategies import GroupBatch, Objective


def score_completion_positions_only() -> bool:
    """Let TRL's fused LM head score only the completion positions on a CPU; True if in effect.

    TRL decides this with ``trl.trainer.utils._use_triton(device)`` (only there, for its
    ``compact`` path; the kernels read their own module's copy). Without that hook in a future
    TRL the trainer still works, just slower on a CPU.
    """
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "guardcal_compact", False):
        return True

    def compact_on_cpu(device: torch.device) -> bool:
        return device.type == "cpu" or bool(original(device))

    compact_on_cpu.guardcal_compact = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu
    return True


class GuardGRPOTrainer(GRPOTrainer):
    def __init__(
        self,
        *args: Any,
        parser: DecisionParser,
        spec: LabelSpec,
        objective: Objective,
        ce_variant: str = "full",
        compact_lm_head: bool = True,
        loss_row_chunk: int = 0,
        **kwargs: Any,
    ) -> None:
        if compact_lm_head:
            score_completion_positions_only()
        with bare_head_for_trl(kwargs.get("model")):  # a LoRA on lm_head: see guardcal/train/lm_head.py
            super().__init__(*args, **kwargs)
        self.parser = parser
        self.spec = spec
        self.objective = objective
        self.ce_variant = ce_variant
        self.loss_row_chunk = loss_row_chunk

    def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """TRL's log-probs, with a LoRA on ``lm_head`` merged into the weight its fused head reads."""
        with merged_lora_head(self.accelerator.unwrap_model(model)):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

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
        pred_t = torch.tensor(pred, device=device)
        correct = found_t & (pred_t == gold)
        out["decision_pos"] = torch.tensor(pos, device=device)
        out["decision_target"] = obj.decision_targets(correct, gold, found_t)
        mode = "train" if self.model.training else "eval"
        batch = self._group_batch(out, inputs, correct, found_t)
        adv = self.objective.advantages(batch)
        if adv is not None:
            n = correct.numel()
            start = self.accelerator.process_index * n
            out["advantages"] = adv[start : start + n].to(device=device, dtype=torch.float32)
        self._metrics[mode]["decision/parse_rate"].append(found_t.float().mean().item())
        self._metrics[mode]["decision/accuracy"].append(correct.float().mean().item())
        for key, value in self._confidence_metrics(inputs, pred_t).items():
            self._metrics[mode][key].append(value)
        for key, value in self.objective.metrics.items():
            self._metrics[mode][key].append(value)
        return out

    def _group_batch(
        self, out: dict[str, Any], inputs: list[dict[str, Any]], correct: torch.Tensor, found: torch.Tensor
    ) -> GroupBatch:
        """Everything the objective may need, gathered across processes (groups can span them)."""
        gather = self.accelerator.gather
        group = self.num_generations if self.model.training else self.num_generations_eval
        batch = GroupBatch(correct=gather(correct.float()) > 0.5, found=gather(found.float()) > 0.5, group_size=group)
        if "decision_logit" in inputs[0]:
            logit = torch.tensor([x["decision_logit"] for x in inputs], device=correct.device, dtype=torch.float64)
            batch.decision_logit = gather(logit)
        if self.objective.needs_policy_logps:
            batch.policy_mean_logp = gather(self._mean_completion_logp(out, reference=False))
        if self.objective.needs_reference:
            batch.reference_ppl = gather(torch.exp(-self._mean_completion_logp(out, reference=True)))
        return batch

    def _mean_completion_logp(self, out: dict[str, Any], reference: bool) -> torch.Tensor:
        """Mean log-prob of the generated (not forced) completion tokens, one no-grad forward in eval mode.

        ``reference=True`` runs the frozen base model: the PEFT model with its adapter disabled.
        """
        model = self.accelerator.unwrap_model(self.model)
        if reference and not hasattr(model, "disable_adapter"):
            raise ValueError("the frozen reference model is the base model under the LoRA adapter: train with LoRA")
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        keep = out["completion_mask"] if "tool_mask" not in out else out["completion_mask"] * out["tool_mask"]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), model.disable_adapter() if reference else nullcontext():
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, attention, out["completion_ids"].size(1), self.args.per_device_train_batch_size
                )
        finally:
            model.train(was_training)
        return pairwise.mean_token_logp(logps.double(), keep)

    def _confidence_metrics(self, inputs: list[dict[str, Any]], pred: torch.Tensor) -> dict[str, float]:
        """q = the sampled label's probability renormalised over the labels, read at generation time."""
        if "decision_label_logprobs" not in inputs[0]:
            return {}
        label_lp = torch.tensor([x["decision_label_logprobs"] for x in inputs], dtype=torch.float64)
        probs = torch.softmax(label_lp, dim=-1)
        rows = torch.arange(len(inputs))
        p = pred.cpu()
        q = torch.where(p >= 0, probs[rows, p.clamp(min=0)], torch.full_like(probs[:, 0], float("nan")))
        q = self.accelerator.gather(q.to(pred.device))  # fixed size per process; NaN = no decision
        q = q[~torch.isnan(q)]
        if q.numel() == 0:
            return {}
        return {"decision/q_mean": q.mean().item(), "decision/q_gt_0.99": (q > 0.99).double().mean().item()}

    # --- loss -----------------------------------------------------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The micro-batch's loss; with ``loss_row_chunk`` set, its gradient is built a few rows at a time.

        Every term of the loss is a sum over rows divided by a micro-batch total (BNPO: the unmasked
        completion tokens; the decision loss: the rollouts with a decision), so each chunk's loss is
        rescaled to the micro-batch's normalisers and back-propagated on its own: the summed gradient
        and the returned loss are the micro-batch's, while only one chunk's activations are alive at
        a time. All chunks but the last are back-propagated here; the last is returned for the
        Trainer's own ``backward`` (with the earlier chunks' detached values added, so the logged
        loss is the whole micro-batch's).
        """
        n, chunk = inputs["completion_ids"].size(0), self.loss_row_chunk
        if chunk <= 0 or n <= chunk or not (model.training and torch.is_grad_enabled()):
            policy, extra = self._rows_loss(model, inputs, _Normalisers.of(inputs))
            return self._log_and_sum(policy, extra)
        totals = _Normalisers.of(inputs)
        starts = list(range(0, n, chunk))
        policy_sum = extra_sum = done = None
        for start in starts:
            part = _rows(inputs, start, min(start + chunk, n), n)
            policy, extra = self._rows_loss(model, part, totals)
            loss = self._combine(policy, extra)
            if start != starts[-1]:
                self.accelerator.backward(loss)  # the Trainer does not rescale: loss_is_scaled_for_ga
                loss = loss.detach()
                done = loss if done is None else done + loss
            else:
                last = loss
            policy_sum = policy.detach() if policy_sum is None else policy_sum + policy.detach()
            if extra is not None:
                extra_sum = extra.detach() if extra_sum is None else extra_sum + extra.detach()
        self._log_terms(policy_sum, extra_sum)
        return last + done

    def _rows_loss(
        self, model: Any, inputs: dict[str, Any], totals: _Normalisers
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(policy term, decision-loss term or None) of these rows, each over the micro-batch's normalisers."""
        policy_scale = totals.share_of_tokens(inputs)
        loss_name = self.objective.decision_loss
        if not self.objective.zero_decision_advantage and loss_name is None:
            return super()._compute_loss(model, inputs) * policy_scale, None
        pos, target = inputs["decision_pos"], inputs["decision_target"]
        advantages = inputs["advantages"]
        if self.objective.zero_decision_advantage:
            advantages = obj.zero_at_decision(advantages, pos, inputs["completion_ids"].size(1))
        captured: list[torch.Tensor] = []
        base = self.accelerator.unwrap_model(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        hook = base.get_decoder().register_forward_hook(lambda _m, _i, o: captured.append(o[0]))
        try:
            policy = super()._compute_loss(model, {**inputs, "advantages": advantages}) * policy_scale
        finally:
            hook.remove()
        if loss_name is None:
            return policy, None
        extra = obj.decision_loss_from_hidden(
            base.get_output_embeddings(),
            captured[-1],
            inputs["prompt_ids"].size(1),
            pos,
            target,
            [list(x) for x in self.spec.token_ids],
            self.ce_variant,
            loss_name,
        )
        return policy, extra * totals.share_of_decisions(inputs)

    def _grad_accum_scale(self) -> float:
        return self.current_gradient_accumulation_steps if self.model.training else 1.0

    def _combine(self, policy: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """TRL's policy term is already divided by the accumulation steps; the decision loss is divided here."""
        if extra is None:
            return policy
        return policy + self.objective.lambda_ * extra / self._grad_accum_scale()

    def _log_and_sum(self, policy: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        self._log_terms(policy.detach(), None if extra is None else extra.detach())
        return self._combine(policy, extra)

    def _log_terms(self, policy: torch.Tensor, extra: torch.Tensor | None) -> None:
        loss_name = self.objective.decision_loss
        if not self.objective.zero_decision_advantage and loss_name is None:
            return  # stock GRPO: TRL logs its own loss
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["loss/policy"].append(policy.item() * self._grad_accum_scale())
        if extra is not None:
            self._metrics[mode][f"loss/{loss_name}"].append(extra.item())


class _Normalisers:
    """The micro-batch totals the loss terms divide by: unmasked completion tokens, rollouts with a decision."""

    def __init__(self, tokens: torch.Tensor, decisions: torch.Tensor | None) -> None:
        self.tokens = tokens
        self.decisions = decisions

    @staticmethod
    def loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
        """TRL's BNPO mask: the completion mask, times the rollout's env mask (forced tokens) when there is one."""
        mask = inputs["completion_mask"]
        return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]

    @classmethod
    def of(cls, inputs: dict[str, Any]) -> _Normalisers:
        decisions = (inputs["decision_pos"] >= 0).sum() if "decision_pos" in inputs else None
        return cls(cls.loss_mask(inputs).sum().float(), decisions)

    def share_of_tokens(self, rows: dict[str, Any]) -> torch.Tensor | float:
        """TRL divides by the rows' own token count; this turns that into the micro-batch's (1.0 for all rows)."""
        own = self.loss_mask(rows).sum().float()
        if bool(own == self.tokens):
            return 1.0
        return own.clamp(min=1.0) / self.tokens.clamp(min=1.0)

    def share_of_decisions(self, rows: dict[str, Any]) -> torch.Tensor | float:
        """The decision loss is a mean over the rows' decisions; this turns it into the micro-batch's mean."""
        own = (rows["decision_pos"] >= 0).sum()
        if self.decisions is None or bool(own == self.decisions):
            return 1.0
        return own.float() / self.decisions.clamp(min=1).float()


def _rows(inputs: dict[str, Any], start: int, end: int, n: int) -> dict[str, Any]:
    """Rows ``start:end`` of every per-row tensor of a micro-batch (anything else is shared as it is)."""
    return {
        k: v[start:end] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == n else v
        for k, v in inputs.items()
    }
