"""The decision parser, with a hand-made token vocabulary."""

import pytest

from guardcal.core.decision import DecisionParser
from guardcal.core.labels import LabelSpec

SAFE, SAFE_SP, UN, UN_SP = 10, 11, 20, 21
CLOSE = (7, 8)  # '</think>' as two tokens
EOS, PAD, WORD, NL = 2, 3, 50, 60
SPEC = LabelSpec(labels=("safe", "unsafe"), surfaces=("Safe", "Unsafe"), token_ids=((SAFE, SAFE_SP), (UN, UN_SP)))
REASON = DecisionParser(SPEC, CLOSE, frozenset({EOS, PAD}), reasoning=True)
DIRECT = DecisionParser(SPEC, (), frozenset({EOS, PAD}), reasoning=False)


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([WORD, *CLOSE, NL, SAFE_SP, EOS], (4, "safe")),
        ([WORD, UN, WORD, *CLOSE, NL, SAFE], (6, "safe")),  # a label inside the think block is ignored
        ([WORD, UN_SP, WORD, SAFE], None),  # no </think>: no decision
        ([WORD, *CLOSE, NL, EOS, UN], None),  # EOS before the label
        ([WORD, *CLOSE, NL, WORD], None),  # truncated: nothing after </think>
        ([*CLOSE, SAFE, *CLOSE, NL, UN_SP, PAD, PAD], (6, "unsafe")),  # two </think>: the last counts
        ([WORD, 7, WORD, 8, SAFE], None),  # a split close tag is not a close tag
        ([], None),
    ],
)
def test_reasoning_parser(ids, expected):
    assert REASON.find(ids) == expected


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([UN_SP, 99, EOS], (0, "unsafe")),
        ([NL, SAFE_SP], (1, "safe")),
        ([PAD, SAFE], None),
        ([WORD, WORD], None),
    ],
)
def test_direct_parser(ids, expected):
    assert DIRECT.find(ids) == expected


def test_reasoning_needs_close_ids():
    with pytest.raises(ValueError, match="</think>"):
        DecisionParser(SPEC, (), reasoning=True)


def test_for_real_tokenizer_finds_forced_suffix(tokenizer):
    from guardcal.core.prompt import PromptTemplate

    spec = LabelSpec.from_tokenizer(tokenizer)
    parser = DecisionParser.for_tokenizer(tokenizer, spec, reasoning=True)
    t = PromptTemplate(mode="reasoning")
    ids = tokenizer.encode("I think it is fine" + t.decision_suffix() + " Unsafe", add_special_tokens=False)
    pos, label = parser.find(ids + [tokenizer.eos_token_id])
    assert label == "unsafe" and ids[pos] in spec.ids_for("unsafe")
