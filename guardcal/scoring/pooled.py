"""The features a pooled head (``core.pooled_head``) reads, with torch: means over the input's tokens, last states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pooled_features(
    model: Any, prompts: Sequence[tuple[list[int], int, int]], readouts: Sequence[tuple[str, int]]
) -> np.ndarray:
    """``[rows, len(readouts) * hidden]``: for each ``(ids, start, end)``, each readout: a mean over
    ``ids[start:end]``, or the last token's state (one forward per prompt, so no padding reaches one)."""
    import torch

    norm = model.get_decoder().norm
    top = int(model.config.num_hidden_layers)
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for ids, start, end in prompts:
            states = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
            parts = []
            for pool, layer in readouts:
                if pool == "last":
                    parts.append(states[layer][0, -1].float().cpu().numpy())
                    continue
                span = states[layer][0, start:end]
                if pool == "mean_normed" and layer != top:
                    span = norm(span)
                parts.append(span.float().mean(0).cpu().numpy())
            rows.append(np.concatenate(parts))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
