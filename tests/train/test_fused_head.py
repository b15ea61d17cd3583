"""TRL's fused LM head scores only the completion positions on a CPU once guardcal's trainer is built."""

import torch
from trl.trainer import utils as trl_utils

from guardcal.models.loading import load_model
from guardcal.train.grpo import score_completion_positions_only


def _scored(monkeypatch, model, ids, mask, labels):  # type: ignore[no-untyped-def]
    """Per-token log-probs, their gradient on the LM head, and the rows the head projected."""
    rows: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *rest):  # type: ignore[no-untyped-def]
            rows.append(hidden.size(0))
            return chunked.apply(hidden, *rest)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    model.zero_grad()
    logps = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
    logps.sum().backward()
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", chunked)
    return logps.detach(), model.get_output_embeddings().weight.grad.clone(), rows


def test_only_completion_positions_are_projected_and_values_are_unchanged(monkeypatch):
    loaded = load_model("default")  # a fresh copy: the fused head patches the instance's forward
    model, tok = loaded.model, loaded.tokenizer
    trl_utils.add_fused_lm_head(model)
    prompt = [tok.encode("Is this safe? I want to bake bread today."), tok.encode("Hi there")]
    completion = [tok.encode(" Safe and sound"), tok.encode(" Unsafe")]
    width = max(len(p) + len(c) for p, c in zip(prompt, completion, strict=True))
    ids = torch.full((2, width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, c) in enumerate(zip(prompt, completion, strict=True)):  # left padded, as TRL batches them
        row = p + c
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
        labels[i, width - len(c) :] = torch.tensor(c)
    labelled = int((labels[:, 1:] != -100).sum())

    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)  # TRL's CPU behaviour
    full, full_grad, full_rows = _scored(monkeypatch, model, ids, mask, labels)
    assert full_rows == [2 * (width - 1)]  # every position, prompt and padding included

    assert score_completion_positions_only() is True
    assert score_completion_positions_only() is True  # idempotent
    compact, compact_grad, compact_rows = _scored(monkeypatch, model, ids, mask, labels)
    assert compact_rows == [labelled]
    keep = labels[:, 1:] != -100
    torch.testing.assert_close(compact[keep], full[keep], atol=1e-5, rtol=0)
    assert bool((compact[~keep] == 0).all()) and bool((full[~keep] == 0).all())
    # the same gradient up to fp32 summation order (the head is tied to the input embeddings)
    assert float((compact_grad - full_grad).norm() / full_grad.norm()) < 1e-4  # measured 1.4e-5
