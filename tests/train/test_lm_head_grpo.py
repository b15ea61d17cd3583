"""GRPO from the shipped guard, whose adapter includes a LoRA on lm_head (TRL's fused head reads only the weight)."""

import pytest
import torch
from peft import PeftModel
from trl import GRPOTrainer

from guardcal.models.loading import check_adapter_dir, load_model
from guardcal.train.config import build_config
from guardcal.train.runner import build_trainer

TINY = {
    "per_device_batch": 4,
    "grad_accum": 1,
    "num_generations": 2,
    "max_input_tokens": 48,
    "reasoning_budget": 0,
    "eval_limit": 0,
    "adapter": "default",
}


@pytest.mark.timeout(600)
def test_grpo_scores_and_trains_the_head_lora(tmp_path, data_dir):
    loaded = load_model("default")
    model = PeftModel.from_pretrained(loaded.model, str(check_adapter_dir("default")), is_trainable=True)
    cfg = build_config({**TINY, "method": "grpo", "output": str(tmp_path), "data_dir": str(data_dir)})
    trainer = build_trainer(cfg, model, loaded.tokenizer, callbacks=[])  # TRL alone refuses an lm_head LoRA
    head = model.get_base_model().get_output_embeddings()
    assert hasattr(head, "lora_A"), "the shipped adapter carries a LoRA on lm_head"
    rows = [trainer.train_dataset[i] for i in (0, 0, 5, 5)]
    torch.manual_seed(0)
    model.eval()
    batch = trainer._generate_and_score_completions(rows)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = batch["completion_ids"].size(1)
    keep = batch["completion_mask"].bool()
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, width)
        unmerged, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, attention, width)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, -width - 1 : -1].float()
    own = torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"][..., None])[..., 0]
    torch.testing.assert_close(logps[keep], own[keep], atol=1e-4, rtol=0)  # the adapted model's log-probs
    assert float((unmerged[keep] - own[keep]).abs().max()) > 0.5  # TRL's own path would skip the head's LoRA

    model.train()
    trainer.current_gradient_accumulation_steps = 1
    model.zero_grad()
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])  # whatever the rewards: every row pulls on the head
    trainer._compute_loss(trainer.model, {**batch, "advantages": advantages}).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lm_head" in n and "lora_" in n]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)
