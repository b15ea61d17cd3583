"""Prompt profiles: the default renders byte-identically to guardcal before profiles, YAML is validated
before any model loads, and each field of a profile changes the fingerprint."""

import json
from pathlib import Path

import pytest

from guardcal.core.profiles import (
    builtin_names,
    default_profile,
    differing_fields,
    load_profile,
    profile_from_dict,
)
from guardcal.core.prompt import PromptTemplate
from guardcal.core.windows import WindowPolicy
from guardcal.errors import ConfigError

BASELINE = json.loads((Path(__file__).parent / "data" / "prompt_baseline.json").read_text())
SHIPPED = json.loads((Path(__file__).parents[2] / "guardcal" / "assets" / "default_bundle.json").read_text())

MINIMAL = {
    "name": "acme",
    "instruction": "Decide whether the message breaks ACME's policy.",
    "labels": {"safe": "Allowed", "unsafe": "Forbidden"},
    "decision_prefix": "Verdict:",
    "template": "{instruction}\n\nMessage: {input}\n\n",
}


@pytest.mark.parametrize("mode", ["direct", "reasoning"])
def test_default_profile_renders_byte_identically_to_before_profiles(mode):
    """Captured from guardcal's PromptTemplate before profiles existed (tests/core/data/prompt_baseline.json)."""
    for text, expected in zip(BASELINE["inputs"], BASELINE[mode], strict=True):
        assert PromptTemplate(mode).render(text) == expected
        assert load_profile("default").render(text, mode) == expected
    assert PromptTemplate(mode).decision_suffix() == BASELINE["decision_suffix"][mode]


def test_default_fingerprints_are_unchanged_and_match_the_shipped_bundle():
    fp = BASELINE["fingerprints"]
    assert PromptTemplate().fingerprint() == fp["direct"] == SHIPPED["prompt_fingerprint"]
    assert PromptTemplate("reasoning").fingerprint() == fp["reasoning"]
    assert PromptTemplate().fingerprint(windows=WindowPolicy(512)) == fp["direct_w512"]
    assert PromptTemplate().fingerprint(("Yes", "No")) == fp["direct_yesno"]
    # the same content loaded from a copy of the YAML under another name is the same prompt
    copy = profile_from_dict({**_default_dict(), "name": "my-copy"})
    assert PromptTemplate(profile=copy).fingerprint() == SHIPPED["prompt_fingerprint"]


def _default_dict():
    import yaml

    return yaml.safe_load((Path(__file__).parents[2] / "guardcal/assets/prompts/default.yaml").read_text())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instruction", "Only spam is Unsafe."),
        ("decision_prefix", "Answer:"),
        ("quoting", "plain"),
        ("labels", {"safe": "OK", "unsafe": "Bad"}),
        ("template", "{instruction} {rule}\nText: {input}\n"),
        ("bos", "<s>"),
    ],
)
def test_every_field_changes_the_fingerprint_and_is_named_in_the_diff(field, value):
    base = default_profile()
    changed = profile_from_dict({**_default_dict(), field: value})
    assert PromptTemplate(profile=changed).fingerprint() != PromptTemplate(profile=base).fingerprint()
    assert [d.split(".")[0] for d in differing_fields(base.describe(), changed.describe())] == [field] * len(
        differing_fields(base.describe(), changed.describe())
    )


def test_conversation_layout_is_part_of_the_fingerprint():
    d = _default_dict()
    d["conversation"] = {**d["conversation"], "judge": "assistant"}
    changed = profile_from_dict(d)
    assert PromptTemplate(profile=changed).fingerprint() != PromptTemplate().fingerprint()
    assert differing_fields(default_profile().describe(), changed.describe()) == ["conversation.judge"]


def test_a_custom_profile_renders_its_template():
    p = profile_from_dict(MINIMAL)
    assert (
        p.render('say "hi"')
        == 'Decide whether the message breaks ACME\'s policy.\n\nMessage: "say \\"hi\\""\n\nVerdict:'
    )
    assert p.decision_surface("Allowed") == " Allowed"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"instruction": None}, "missing field 'instruction'"),
        ({"labels": {"safe": "Safe"}}, "labels needs words for \\['unsafe'\\]"),
        ({"labels": {"safe": True, "unsafe": False}}, "quote the word"),
        ({"labels": {"safe": "Safe", "unsafe": "Unsafe", "maybe": "Hmm"}}, "unknown key"),
        ({"labels": {"safe": "Safe", "unsafe": "safe"}}, "distinct"),
        ({"template": "{instruction} {policy} {input}"}, "unknown placeholder"),
        ({"template": "{instruction} no input here"}, "must contain \\{input\\}"),
        ({"quoting": "xml"}, "quoting is 'xml'"),
        ({"colour": "red"}, "unknown field"),
        ({"mode": "reasoning"}, "no 'reasoning' entry"),
        ({"template": None}, "give a 'template'"),
        ({"conversation": {"judge": "system", "template": "{input}"}}, "judge is 'system'"),
        ({"conversation": {"judge": "last"}}, "needs a 'template'"),
    ],
)
def test_bad_profiles_are_refused_naming_the_field(patch, message):
    data = {**MINIMAL, **patch}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        profile_from_dict(data, "acme.yaml")


def test_unknown_profile_name_lists_the_built_ins(tmp_path):
    with pytest.raises(ConfigError, match="neither a built-in prompt profile .*default"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(str(bad))


def test_reasoning_needs_a_reasoning_rule():
    with pytest.raises(ConfigError, match="no 'reasoning' rule"):
        PromptTemplate("reasoning", profile=profile_from_dict(MINIMAL))


def test_every_built_in_loads():
    assert builtin_names()[0] == "default"
    for name in builtin_names():
        assert load_profile(name).name == name
