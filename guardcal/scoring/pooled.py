"""The features a pooled head (``core.pooled_head``) reads, with torch: means over the input's tokens, last states.

Prompts run together, right-padded: a causal model's real tokens never attend to the padding after
them, so each prompt's states equal its own forward's (within float noise), the means cover real
tokens only and ``last`` is each prompt's own last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pooled_features(
    model: Any,
    prompts: Sequence[tuple[list[int], int, int]],
    readouts: Sequence[tuple[str, int]],
    pad_id: int = 0,
) -> np.ndarray:
    """``[rows, len(readouts) * hidden]``: for each ``(ids, start, end)``, each readout: a mean over
    ``ids[start:end]``, or the last token's state; the prompts run as one right-padded forward."""
    import torch

    if not prompts:
        return np.zeros((0, len(readouts) * int(model.config.hidden_size)), dtype=np.float32)
    norm = model.get_decoder().norm
    top = int(model.config.num_hidden_layers)
    device = next(model.parameters()).device
    width = max(len(ids) for ids, _, _ in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, (ids, _, _) in enumerate(prompts):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    with torch.inference_mode():
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        rows = []
        for i, (ids, start, end) in enumerate(prompts):
            parts = []
            for pool, layer in readouts:
                if pool == "last":
                    parts.append(out.hidden_states[layer][i, len(ids) - 1].float().cpu().numpy())
                    continue
                span = out.hidden_states[layer][i, start:end]
                if pool == "mean_normed" and layer != top:
                    span = norm(span)
                parts.append(span.float().mean(0).cpu().numpy())
            rows.append(np.concatenate(parts))
    return np.stack(rows)
