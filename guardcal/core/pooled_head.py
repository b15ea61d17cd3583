"""A pooled head: the guard's reading from the mean of the input's own hidden states (issue 21).

The decision-token guard reads one position, the last prompt token. On SmolLM2 that position
holds less than the input's tokens do (``results/guard/candidates/readout-probes/``): a linear map
of the input tokens' mean hidden state classifies better. A :class:`PooledHead` is that map. For
each prompt it takes the quoted input's own tokens (:func:`input_span`), averages each chosen
layer's states over them (or takes the decision position's state, :data:`POOLS`), puts the readouts
side by side and reads

    logit P(unsafe) = weight . (features - center) / scale + bias

The head is fitted by logistic regression; it never changes the model. ``scoring.pooled`` computes
the features with torch; this module holds the head and its file, with numpy only. It is stored as one
safetensors file (tensors ``weight``, ``center``, ``scale``, ``bias``; metadata ``format`` and
``readouts``, a JSON list of ``[pool, layer]``); nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from guardcal.core.confidence import Scores
from guardcal.errors import ModelError

FORMAT: Final = "guardcal-pooled-head/1"
#: ``mean``: the mean of ``hidden_states[layer]`` over the input's tokens; ``mean_normed``: the mean of
#: each token's state after the model's final norm (the top layer's states are already normed);
#: ``last``: the state at the prompt's last token, the decision position (what the decision token reads
#: at the top layer)
POOLS: Final = ("mean", "mean_normed", "last")
FILENAME: Final = "pooled_head.safetensors"


@dataclass(frozen=True)
class PooledHead:
    """A logistic-regression head over pooled hidden states; ``readouts`` are ``(pool, layer)`` pairs
    (layer: a ``hidden_states`` index, 0 = the embeddings)."""

    readouts: tuple[tuple[str, int], ...]
    weight: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    bias: float

    def __post_init__(self) -> None:
        bad = [pool for pool, _ in self.readouts if pool not in POOLS]
        if not self.readouts or bad:
            raise ModelError(f"a pooled head needs readouts with pools in {POOLS}; got {list(self.readouts)}")
        shapes = {self.weight.shape, self.center.shape, self.scale.shape}
        if len(shapes) != 1 or self.weight.ndim != 1 or self.weight.shape[0] % len(self.readouts):
            raise ModelError(
                f"pooled head: weight, center and scale must be 1-D of one length, a multiple of the "
                f"{len(self.readouts)} readouts; got {sorted(shapes)}"
            )
        if not (np.all(np.isfinite(self.weight)) and np.all(self.scale > 0) and np.isfinite(self.bias)):
            raise ModelError("pooled head: weights must be finite and scales positive; refit the head")

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0] // len(self.readouts))

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logit of P(unsafe) for ``[rows, features]`` (the readouts side by side)."""
        x = np.asarray(features, dtype=np.float64)
        return ((x - self.center) / self.scale) @ self.weight.astype(np.float64) + self.bias

    def scores(self, features: np.ndarray) -> Scores:
        """:class:`Scores` with all mass on the two labels: P(unsafe) = sigmoid(logit)."""
        p_unsafe = 1.0 / (1.0 + np.exp(-np.clip(self.logits(features), -60.0, 60.0)))
        return Scores(p_safe=1.0 - p_unsafe, p_unsafe=p_unsafe)

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {
            "weight": self.weight.astype(np.float32),
            "center": self.center.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "bias": np.array([self.bias], dtype=np.float32),
        }
        save_file(tensors, str(path), metadata={"format": FORMAT, "readouts": json.dumps(list(self.readouts))})
        return path

    @classmethod
    def load(cls, path: str | Path) -> PooledHead:
        """Read a head written by :meth:`save`; a clear error for anything else."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no pooled head at {path}; fit one with `guardcal train --method head`")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ModelError(f"{path} is not a safetensors file ({type(exc).__name__}); refit the head") from exc
        if meta.get("format") != FORMAT or not {"weight", "center", "scale", "bias"} <= set(tensors):
            raise ModelError(
                f"{path} is not a guardcal pooled head (format {meta.get('format')!r}, want {FORMAT!r}, "
                "with tensors weight, center, scale and bias); refit the head"
            )
        readouts = tuple((str(pool), int(layer)) for pool, layer in json.loads(meta["readouts"]))
        return cls(readouts, tensors["weight"], tensors["center"], tensors["scale"], float(tensors["bias"][0]))


def input_span(template: Any, tokenizer: Any, item: Any, prompt: str | None = None) -> tuple[list[int], int, int]:
    """The prompt's token ids and the ``[start, end)`` of the judged text's own tokens in them: the text
    as the profile quotes it, its first copy for a plain text (a prompt may show it again later), the
    last for a conversation (the judged turn comes last). Tokens that straddle the quote's edge are left
    out; a text too short to hold a whole token gets the one token that overlaps it most. ``prompt`` is
    ``template.render(item)`` when the caller has rendered it already."""
    from guardcal.core.conversation import Conversation

    prompt = template.render(item) if prompt is None else prompt
    quoted = template.spec.quote(item.text if isinstance(item, Conversation) else item)
    start_char = prompt.rfind(quoted) if isinstance(item, Conversation) else prompt.find(quoted)
    if start_char < 0:
        raise ModelError("the prompt profile does not show the judged text as quoted; a pooled head cannot read it")
    end_char = start_char + len(quoted)
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    inside = [k for k, (a, b) in enumerate(offsets) if a >= start_char and b <= end_char and b > a]
    if not inside:
        overlap = [min(b, end_char) - max(a, start_char) for a, b in offsets]
        inside = [int(np.argmax(overlap))]
    return list(ids), inside[0], inside[-1] + 1


def input_spans(
    template: Any, tokenizer: Any, items: Sequence[Any], prompts: Sequence[str]
) -> list[tuple[list[int], int, int]]:
    """:func:`input_span` of each item, from the prompts the caller rendered for them (the ones the
    decision token would read)."""
    return [input_span(template, tokenizer, item, prompt) for item, prompt in zip(items, prompts, strict=True)]
