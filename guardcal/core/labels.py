"""Decision-token label spec: which token ids stand for which label.

The decision token of a label is the first token of its surface text
("Safe" / "Unsafe"). Variants with a leading space are resolved too, and
their probabilities are summed by the confidence reader. Two labels that
share a first token cannot be told apart at the decision position, so
resolution fails loudly.

A prompt profile may add a third word meaning ``escalate`` (Qwen3Guard's
"Controversial"): its probability is read beside the two labels
(``Scores.p_escalate``) and a decision where it is the most likely word is
escalated; calibration still reads P(unsafe) over the two labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from guardcal.core.examples import SAFE, UNSAFE
from guardcal.errors import LabelSpecError

DEFAULT_SURFACES: Mapping[str, str] = {SAFE: "Safe", UNSAFE: "Unsafe"}
ESCALATE = "escalate"


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class LabelSpec:
    """Labels, their surface strings and their decision-token ids.

    ``token_ids[label]`` holds every first-token id that counts for the
    label (e.g. the ids of "Safe" and " Safe").
    """

    labels: tuple[str, ...]
    surfaces: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: _Tokenizer,
        surfaces: Mapping[str, str] = DEFAULT_SURFACES,
    ) -> LabelSpec:
        """Resolve decision-token ids for ``tokenizer``; fail on ambiguity."""
        if set(surfaces) not in ({SAFE, UNSAFE}, {SAFE, UNSAFE, ESCALATE}):
            raise LabelSpecError(
                f"label surfaces must map exactly {SAFE!r} and {UNSAFE!r} (and optionally {ESCALATE!r}), got "
                f"{sorted(surfaces)}; pass e.g. {{'safe': 'Safe', 'unsafe': 'Unsafe'}}"
            )
        labels = tuple(x for x in (SAFE, UNSAFE, ESCALATE) if x in surfaces)
        ids = tuple(_first_token_ids(tokenizer, surfaces[label]) for label in labels)
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                shared = set(ids[i]) & set(ids[j])
                if shared:
                    raise LabelSpecError(
                        f"labels {surfaces[labels[i]]!r} and {surfaces[labels[j]]!r} share first "
                        f"token id(s) {sorted(shared)} in this tokenizer, so the decision "
                        "token cannot tell them apart; choose label strings whose first "
                        "tokens differ (e.g. 'Safe'/'Unsafe', 'Yes'/'No')"
                    )
        return cls(labels=labels, surfaces=tuple(surfaces[x] for x in labels), token_ids=ids)

    @property
    def all_ids(self) -> tuple[int, ...]:
        """All decision-token ids, label by label, in ``labels`` order."""
        return tuple(i for ids in self.token_ids for i in ids)

    def ids_for(self, label: str) -> tuple[int, ...]:
        return self.token_ids[self.labels.index(label)]

    def label_of(self, token_id: int) -> str | None:
        """The label whose decision token is ``token_id``, or None."""
        for label, ids in zip(self.labels, self.token_ids, strict=True):
            if token_id in ids:
                return label
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "labels": list(self.labels),
            "surfaces": list(self.surfaces),
            "token_ids": [list(ids) for ids in self.token_ids],
        }


def _first_token_ids(tokenizer: _Tokenizer, surface: str) -> tuple[int, ...]:
    if not surface.strip():
        raise LabelSpecError("a label surface string is empty; give each label a word")
    found: list[int] = []
    for variant in _variants(surface):
        toks: Sequence[int] = tokenizer.encode(variant, add_special_tokens=False)
        if not toks:
            raise LabelSpecError(f"tokenizer turned label {variant!r} into no tokens")
        if toks[0] not in found:
            found.append(toks[0])
    return tuple(found)


def _variants(surface: str) -> tuple[str, ...]:
    return (surface, " " + surface)
