"""--loss-row-chunk: the micro-batch's loss and gradient, from forwards a few completions wide."""

import pytest
import torch

from guardcal.models.loading import load_model
from guardcal.train.config import build_config
from guardcal.train.runner import build_trainer

TINY = {
    "per_device_batch": 4,
    "grad_accum": 1,
    "num_generations": 2,
    "max_input_tokens": 24,
    "reasoning_budget": 3,
    "eval_limit": 0,
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,  # dropout masks would be drawn in another order chunk by chunk
    "seed": 3,
}


def _loss_and_grads(trainer, batch, chunk, widths):  # type: ignore[no-untyped-def]
    trainer.loss_row_chunk = chunk
    trainer.model.zero_grad()
    widths.clear()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["grpo", "cal-grpo"])
def test_chunked_rows_give_the_micro_batch_loss_and_gradient(method, tmp_path, data_dir):
    loaded = load_model("default")  # a fresh copy: TRL patches the instance's forward
    cfg = build_config({**TINY, "method": method, "output": str(tmp_path), "data_dir": str(data_dir)})
    trainer = build_trainer(cfg, loaded.model, loaded.tokenizer, callbacks=[])
    rows = [trainer.train_dataset[i] for i in (0, 0, 7, 7)]  # two prompts, two completions each
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(rows)
    assert batch["completion_ids"].size(0) == 4

    widths: list[int] = []
    decoder = trainer.accelerator.unwrap_model(trainer.model).get_base_model().get_decoder()
    hook = decoder.register_forward_hook(lambda _m, _i, out: widths.append(int(out[0].size(0))))
    try:
        whole, whole_grads = _loss_and_grads(trainer, batch, 0, widths)
        assert widths == [4]
        chunked, chunked_grads = _loss_and_grads(trainer, batch, 1, widths)
        assert widths == [1, 1, 1, 1]
    finally:
        hook.remove()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    assert whole_grads.keys() == chunked_grads.keys() and whole_grads
    total = sum(float(g.norm()) for g in whole_grads.values())
    assert total > 0
    for name, g in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], g, rtol=1e-4, atol=1e-6 * total, msg=name)
