"""Turn labelled examples into training rows (TRL dataset rows) built with the shared prompt template."""

from __future__ import annotations

from typing import Any

from guardcal.core.examples import LABELS, Example
from guardcal.core.labels import LabelSpec
from guardcal.core.prompt import PromptTemplate
from guardcal.core.windows import first_window
from guardcal.errors import DataError


def check_trainable(examples: list[Example], key: str) -> None:
    """A training set needs examples of both labels."""
    if not examples:
        raise DataError(f"training set {key!r} is empty; pass a dataset with labelled rows")
    present = {e.label for e in examples}
    if present != set(LABELS):
        raise DataError(
            f"training set {key!r} has only {sorted(present)} labels; a classifier needs both 'safe' and "
            "'unsafe' examples"
        )


def truncate(text: str, tokenizer: Any, max_tokens: int) -> str:
    """A labelled training row's text: its first ``max_tokens`` tokens (``core.windows.first_window``).

    Training keeps one prompt per labelled row, so an over-budget row is trained on its first
    window only; scoring (evaluate, calibrate, serve) reads every window instead.
    """
    return first_window(text, tokenizer, max_tokens)


def decision_token_id(tokenizer: Any, spec: LabelSpec, label: str, template: PromptTemplate | None = None) -> int:
    """The token SFT teaches at the decision position: the first token of ' <Label>' after a prefix such as
    ``Classification:`` (the profile's ``decision_surface``: the bare word after whitespace)."""
    word = spec.surfaces[spec.labels.index(label)]
    surface = template.spec.decision_surface(word) if template is not None else " " + word
    return int(tokenizer.encode(surface, add_special_tokens=False)[0])


def _item(ex: Example, tokenizer: Any, template: PromptTemplate, max_tokens: int) -> Any:
    """A row's text (first window), or its conversation with the judged turn cut to the first window."""
    if not ex.messages:
        return truncate(ex.text, tokenizer, max_tokens)
    conv = template.spec.judged(ex.messages, f"example {ex.id!r}: messages")
    return conv.with_text(truncate(conv.text, tokenizer, max_tokens))


def sft_rows(
    examples: list[Example], tokenizer: Any, spec: LabelSpec, template: PromptTemplate, max_tokens: int
) -> list[dict[str, Any]]:
    """Pre-tokenised rows: the prompt, then the decision token; loss on the decision token only."""
    rows = []
    for ex in examples:
        prompt_ids = tokenizer.encode(
            template.render(_item(ex, tokenizer, template, max_tokens)), add_special_tokens=False
        )
        ids = prompt_ids + [decision_token_id(tokenizer, spec, ex.label, template)]
        rows.append({"input_ids": ids, "completion_mask": [0] * len(prompt_ids) + [1]})
    return rows


def sft_class_weights(
    examples: list[Example], tokenizer: Any, spec: LabelSpec, template: PromptTemplate | None = None
) -> dict[int, float]:
    """Decision-token id → loss weight, the inverse of its label's share (mean weight over the rows = 1)."""
    n = len(examples)
    counts = {label: sum(e.label == label for e in examples) for label in LABELS}
    return {
        decision_token_id(tokenizer, spec, label, template): n / (len(LABELS) * count)
        for label, count in counts.items()
        if count
    }


def grpo_rows(
    examples: list[Example], tokenizer: Any, template: PromptTemplate, max_tokens: int
) -> list[dict[str, Any]]:
    """Plain-text prompts with the gold label as a column (reward functions receive it)."""
    return [{"prompt": template.render(_item(e, tokenizer, template, max_tokens)), "label": e.label} for e in examples]
