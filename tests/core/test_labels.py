import pytest

from guardcal.core.labels import LabelSpec
from guardcal.errors import LabelSpecError


class WordTokenizer:
    """A toy tokenizer: each distinct whitespace-led word piece gets an id."""

    def __init__(self, pieces: dict[str, list[str]]):
        self.pieces = pieces
        self.vocab: dict[str, int] = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(p, len(self.vocab)) for p in self.pieces[text]]


def test_real_tokenizer_resolves_first_tokens(tokenizer):
    spec = LabelSpec.from_tokenizer(tokenizer)
    assert spec.labels == ("safe", "unsafe")
    for label, surface in zip(spec.labels, spec.surfaces, strict=True):
        for variant in (surface, " " + surface):
            first = tokenizer.encode(variant, add_special_tokens=False)[0]
            assert first in spec.ids_for(label)
            assert spec.label_of(first) == label
    assert not set(spec.ids_for("safe")) & set(spec.ids_for("unsafe"))
    assert spec.all_ids == spec.ids_for("safe") + spec.ids_for("unsafe")


def test_shared_first_token_is_refused():
    tok = WordTokenizer({"Un": ["Un"], " Un": [" Un"], "Unsafe": ["Un", "safe"], " Unsafe": [" Un", "safe"]})
    with pytest.raises(LabelSpecError, match="share first token"):
        LabelSpec.from_tokenizer(tok, {"safe": "Un", "unsafe": "Unsafe"})


def test_label_set_must_be_safe_and_unsafe():
    with pytest.raises(LabelSpecError, match="exactly 'safe' and 'unsafe'"):
        LabelSpec.from_tokenizer(WordTokenizer({}), {"ok": "Safe", "unsafe": "Unsafe"})


def test_unknown_token_has_no_label(tokenizer):
    spec = LabelSpec.from_tokenizer(tokenizer)
    assert spec.label_of(tokenizer.encode(" the", add_special_tokens=False)[0]) is None
    assert spec.to_dict()["surfaces"] == ["Safe", "Unsafe"]
