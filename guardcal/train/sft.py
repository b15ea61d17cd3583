"""SFT on the decision token only (the paper's eq. 1), on TRL's ``SFTTrainer``.

Each row is the rendered prompt followed by the label's decision token, and
only that token carries a label. Instead of materialising vocabulary logits
at every position (most of the cost on a CPU), the loss runs the decoder once,
takes the hidden state just before the decision token, and applies the LM
head to that row only: ``CE = -log p(decision token | prompt)``, averaged over
the rows of the batch (the same number TRL's completion-only loss computes).
"""

from __future__ import annotations

from typing import Any

import torch
from trl import SFTTrainer

from guardcal.train.lm_head import bare_head_for_trl


class DecisionSFTTrainer(SFTTrainer):
    """``class_weights`` (decision-token id → weight) weighs each row's CE by its gold label."""

    def __init__(self, *args: Any, class_weights: dict[int, float] | None = None, **kwargs: Any) -> None:
        with bare_head_for_trl(kwargs.get("model")):
            super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        has_label = labels != -100
        if not bool(has_label.any(dim=1).all()):
            raise ValueError("every SFT row needs exactly one decision-token label")
        pos = has_label.int().argmax(dim=1)  # the decision token's position in each row
        base = self.accelerator.unwrap_model(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        rows = torch.arange(ids.size(0), device=ids.device)
        with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16)):
            hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = base.get_output_embeddings()(hidden[rows, pos - 1]).float()
        gold = ids[rows, pos]
        per_row = torch.nn.functional.cross_entropy(logits, gold, reduction="none")
        if self.class_weights is not None:
            weights = torch.tensor([self.class_weights[int(t)] for t in gold], dtype=per_row.dtype, device=gold.device)
            per_row = per_row * weights
        loss = per_row.sum()
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
        else:
            loss = loss / ids.size(0)
        return (loss, None) if return_outputs else loss
