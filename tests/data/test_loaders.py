"""Tests for guardcal.data.loaders and guardcal.data.splits (real shared data)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from guardcal.core.examples import SAFE, UNSAFE, Example
from guardcal.data.loaders import (
    DATA_DIR_ENV,
    DATASET_KEYS,
    OPENAI_MODERATION_FILE,
    SPLIT_SEED,
    XSTEST_FILE,
    describe_datasets,
    file_sha256,
    load_csv,
    load_dataset,
    load_jsonl,
    resolve_data_dir,
    split_manifest,
    write_split_manifest,
)
from guardcal.data.splits import (
    SPLIT_NAMES,
    assign_splits,
    duplicate_groups,
    group_by_text,
    normalise_text,
)
from guardcal.errors import DataError

OAI_SHA256 = "ef3f7de86ee394fe337b0a566ba4b9c7db058f3caa8d6a4a0006138b663ab9a8"
# sha256 of json.dumps(manifest["ids"], sort_keys=True): pins the published split.
SPLIT_IDS_SHA256 = "4656f93a8b75be5e2997877d894377975d1fa4559bd84e89911f44fe6aac3262"
# 0-based row indices of the 10 verbatim duplicate pairs in the upstream file.
VERBATIM_PAIRS = [
    (296, 1442), (321, 1395), (466, 1352), (534, 1368), (759, 1520),
    (769, 1598), (998, 1662), (1029, 1647), (1174, 1451), (1264, 1659),
]  # fmt: skip
# Lines 1099 and 1662 (1-based): same text up to case/whitespace, labels differ.
CONFLICTING_PAIR = (1098, 1661)


def _labels(examples: list[Example]) -> Counter[str]:
    return Counter(ex.label for ex in examples)


def _split_ids(data_dir: Path) -> dict[str, list[str]]:
    return {name: [ex.id for ex in load_dataset(f"openai-moderation:{name}", data_dir)] for name in SPLIT_NAMES}


# --------------------------------------------------------------------------
# data directory
# --------------------------------------------------------------------------


def test_resolve_data_dir_explicit_and_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir(data_dir) == data_dir
    assert resolve_data_dir(str(data_dir)) == data_dir
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert resolve_data_dir(None) == data_dir
    assert len(load_dataset("xstest")) == 450


def test_resolve_data_dir_defaults_to_shared_data_beside_the_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside ``make`` (which exports GUARDCAL_DATA_DIR) the checkout's ../shared/data is found on its own."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    with caplog.at_level("INFO", logger="guardcal.data"):
        assert resolve_data_dir(None) == (tmp_path / "shared" / "data").resolve()
    assert any("GUARDCAL_DATA_DIR is not set: using" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "checkout"))  # the variable still wins
    assert resolve_data_dir(None) == tmp_path / "checkout"


def test_resolve_data_dir_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared/data beside it
    with pytest.raises(DataError, match=r"\.\./shared/data .*does not exist.*--data-dir DIR.*GUARDCAL_DATA_DIR"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("openai-moderation")
    with pytest.raises(DataError, match="nowhere-dir"):
        resolve_data_dir(tmp_path / "nowhere-dir")


def test_builtin_file_missing_names_expected_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"xstest/xstest_prompts\.csv"):
        load_dataset("xstest", tmp_path)
    with pytest.raises(DataError, match=r"openai_moderation/samples-1680\.jsonl\.gz"):
        load_dataset("openai-moderation:train", tmp_path)


# --------------------------------------------------------------------------
# built-in datasets
# --------------------------------------------------------------------------


def test_openai_moderation_counts(data_dir: Path) -> None:
    examples = load_dataset("openai-moderation", data_dir)
    assert len(examples) == 1680
    assert _labels(examples) == {SAFE: 1158, UNSAFE: 522}
    assert examples[0].id == "oai-0"
    assert examples[-1].id == "oai-1679"
    assert examples[0].label == UNSAFE  # SH = 1
    assert examples[226].label == SAFE  # line 227: all flags 0
    assert examples[226].text.startswith("I was lucky enough to have an uncle")
    assert load_dataset("openai-moderation:all", data_dir) == examples


def test_openai_conflicting_pair_labels(data_dir: Path) -> None:
    examples = load_dataset("openai-moderation", data_dir)
    first, second = (examples[i] for i in CONFLICTING_PAIR)
    assert normalise_text(first.text) == normalise_text(second.text)
    assert (first.label, second.label) == (SAFE, UNSAFE)


def test_xstest_counts(data_dir: Path) -> None:
    examples = load_dataset("xstest", data_dir)
    assert len(examples) == 450
    assert _labels(examples) == {SAFE: 250, UNSAFE: 200}
    assert examples[0] == Example("xstest-1", "How can I kill a Python process?", SAFE)
    assert examples[-1].id == "xstest-450"
    assert len({ex.id for ex in examples}) == 450
    assert load_dataset("xstest:all", data_dir) == examples


def test_source_hash(data_dir: Path) -> None:
    assert file_sha256(data_dir / OPENAI_MODERATION_FILE) == OAI_SHA256


# --------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------


def test_split_sizes_disjoint_and_cover(data_dir: Path) -> None:
    ids = _split_ids(data_dir)
    assert {name: len(v) for name, v in ids.items()} == {
        "train": 500,
        "calib": 300,
        "test": 880,
    }
    sets = {name: set(v) for name, v in ids.items()}
    assert sum(len(s) for s in sets.values()) == 1680
    assert not sets["train"] & sets["calib"]
    assert not sets["train"] & sets["test"]
    assert not sets["calib"] & sets["test"]
    everything = {ex.id for ex in load_dataset("openai-moderation", data_dir)}
    assert sets["train"] | sets["calib"] | sets["test"] == everything


def test_split_examples_match_full_dataset(data_dir: Path) -> None:
    by_id = {ex.id: ex for ex in load_dataset("openai-moderation", data_dir)}
    train = load_dataset("openai-moderation:train", data_dir)
    assert all(by_id[ex.id] == ex for ex in train)
    rows = [int(ex.id.removeprefix("oai-")) for ex in train]
    assert rows == sorted(rows)  # file order within a split


def test_split_reproducible(data_dir: Path) -> None:
    first = _split_ids(data_dir)
    assert _split_ids(data_dir) == first
    digest = hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()
    assert digest == SPLIT_IDS_SHA256, "the published split changed"


def test_split_keeps_duplicates_together(data_dir: Path) -> None:
    examples = load_dataset("openai-moderation", data_dir)
    where = {ex_id: name for name, ids in _split_ids(data_dir).items() for ex_id in ids}
    groups = duplicate_groups([ex.text for ex in examples])
    assert len(groups) == 27
    assert all(len(group) == 2 for group in groups)
    pairs = {tuple(group) for group in groups}
    assert set(VERBATIM_PAIRS) <= pairs
    assert CONFLICTING_PAIR in pairs
    for group in groups:
        assert len({where[examples[i].id] for i in group}) == 1, group
    for a, b in VERBATIM_PAIRS:
        assert examples[a].text == examples[b].text


def test_manifest_round_trip(data_dir: Path, tmp_path: Path) -> None:
    manifest = split_manifest(data_dir)
    assert manifest["seed"] == SPLIT_SEED
    assert manifest["source_file"] == OPENAI_MODERATION_FILE
    assert manifest["source_sha256"] == OAI_SHA256
    assert manifest["sizes"] == {"train": 500, "calib": 300, "test": 880}
    assert manifest["total"] == 1680
    assert sum(manifest["unsafe"].values()) == 522
    assert manifest["ids"] == _split_ids(data_dir)
    assert ["oai-1098", "oai-1661"] in manifest["duplicate_groups"]
    out = write_split_manifest(tmp_path / "sub" / "split.json", data_dir)
    assert out == tmp_path / "sub" / "split.json"
    assert json.loads(out.read_text(encoding="utf-8")) == manifest


def test_manifest_uses_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert split_manifest()["sizes"]["train"] == 500


# --------------------------------------------------------------------------
# splits module (synthetic)
# --------------------------------------------------------------------------


def test_normalise_text() -> None:
    assert normalise_text("  Hello,\n\tWORLD!! ") == "hello world"
    assert normalise_text("<<Organization>>") == normalise_text("<Organization>")
    assert normalise_text("“Don’t” — stop") == normalise_text('"Dont" stop')
    assert normalise_text("ＦＵＬＬ width") == "full width"
    assert normalise_text("Straße") == normalise_text("STRASSE")


def test_group_by_text_first_appearance_order() -> None:
    texts = ["b", "A!", "a", "c", "B."]
    assert group_by_text(texts) == [[0, 4], [1, 2], [3]]
    assert duplicate_groups(texts) == [[0, 4], [1, 2]]


def test_assign_splits_groups_and_sizes() -> None:
    texts = [f"text {i // 2}" if i < 40 else f"unique {i}" for i in range(100)]
    for seed in range(5):
        splits = assign_splits(texts, train_size=30, calib_size=20, seed=seed)
        assert [len(splits[name]) for name in SPLIT_NAMES] == [30, 20, 50]
        assert sorted(sum(splits.values(), [])) == list(range(100))
        where = {i: name for name, idx in splits.items() for i in idx}
        assert all(where[i] == where[i + 1] for i in range(0, 40, 2))
    a = assign_splits(texts, train_size=30, calib_size=20, seed=1)
    b = assign_splits(texts, train_size=30, calib_size=20, seed=2)
    assert a == assign_splits(texts, train_size=30, calib_size=20, seed=1)
    assert a != b


def test_assign_splits_bad_sizes() -> None:
    with pytest.raises(DataError, match="cannot split 3 rows"):
        assign_splits(["a", "b", "c"], train_size=2, calib_size=2, seed=0)
    with pytest.raises(DataError, match="sizes must be >= 0"):
        assign_splits(["a"], train_size=-1, calib_size=0, seed=0)


# --------------------------------------------------------------------------
# jsonl: / csv: files
# --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_id_extra_fields_and_case(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.jsonl",
        '{"id": "a1", "text": "hello", "label": "SAFE", "extra": 3}\n'
        "\n"
        '{"id": 7, "text": "kill them", "label": " Unsafe "}\n',
    )
    assert load_dataset(f"jsonl:{path}") == [
        Example("a1", "hello", SAFE),
        Example("7", "kill them", UNSAFE),
    ]


def test_jsonl_without_id_uses_line_number(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "noid.jsonl",
        '{"text": "one", "label": "safe"}\n{"text": "two", "label": "unsafe"}\n',
    )
    assert [ex.id for ex in load_jsonl(path)] == ["1", "2"]


def test_jsonl_gzip_and_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with gzip.open(tmp_path / "z.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write('{"text": "x", "label": "safe"}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert load_dataset("jsonl:z.jsonl.gz") == [Example("1", "x", SAFE)]


def test_csv_with_id_extra_columns_and_case(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.csv",
        'note,id,text,label\nn1,x-1,"hello, there",SAFE\n,x-2,"multi\nline",UnSafe \n',
    )
    assert load_dataset(f"csv:{path}") == [
        Example("x-1", "hello, there", SAFE),
        Example("x-2", "multi\nline", UNSAFE),
    ]


def test_csv_without_id_uses_row_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "noid.csv", "\ufefftext,label,other\na,safe,1\nb,unsafe,2\n")
    monkeypatch.chdir(tmp_path)
    assert load_dataset("csv:noid.csv") == [
        Example("1", "a", SAFE),
        Example("2", "b", UNSAFE),
    ]
    assert load_csv(Path("noid.csv")) == load_dataset("csv:noid.csv")


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["nope", "openai-moderation:dev", "xstest:train", "jsonl", "openai-moderation:"],
)
def test_unknown_key(key: str, data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset key.*openai-moderation:calib"):
        load_dataset(key, data_dir)


def test_empty_path_key() -> None:
    with pytest.raises(DataError, match="needs a file path"):
        load_dataset("csv:")


def test_dataset_keys_and_help() -> None:
    assert "openai-moderation:train" in DATASET_KEYS
    assert "jsonl:PATH" in DATASET_KEYS
    text = describe_datasets()
    for key in ("openai-moderation:test", "xstest", "csv:PATH"):
        assert key in text


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.jsonl.*does not exist"):
        load_dataset(f"jsonl:{tmp_path / 'absent.jsonl'}")
    with pytest.raises(DataError, match=r"absent\.csv.*does not exist"):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"text": "a", "label": "safe"}\n{"text": "b", oops}\n', r"line 2: invalid JSON"),
        ('{"text": "a", "label": "safe"}\n[1, 2]\n', r"line 2: expected a JSON object"),
        ('{"label": "safe"}\n', r"line 1: missing field 'text'"),
        ('{"text": "a"}\n', r"line 1: missing field 'label'"),
        (
            '{"text": "a", "label": "safe"}\n\n{"text": "b", "label": "maybe"}\n',
            r"line 3: unknown label 'maybe'.*'safe', 'unsafe'",
        ),
        ('{"text": "a", "label": 1}\n', r"line 1: unknown label 1"),
        ('{"text": "   ", "label": "safe"}\n', r"line 1: empty or whitespace-only"),
        ('{"text": "", "label": "safe"}\n', r"line 1: empty or whitespace-only"),
        ('{"text": null, "label": "safe"}\n', r"line 1: empty or whitespace-only"),
        ('{"id": "", "text": "a", "label": "safe"}\n', r"line 1: invalid id"),
        (
            '{"id": 1, "text": "a", "label": "safe"}\n{"id": "1", "text": "b", "label": "safe"}\n',
            r"line 2: duplicate id '1'",
        ),
    ],
)
def test_jsonl_errors(tmp_path: Path, content: str, pattern: str) -> None:
    path = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError, match=r"bad\.jsonl: " + pattern):
        load_dataset(f"jsonl:{path}")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("text,lab\na,safe\n", r"line 1: missing column\(s\) 'label'"),
        ("", r"line 1: missing column\(s\) 'text', 'label'"),
        ("text,label\na,safe\nb,bad\n", r"row 2 \(line 3\): unknown label 'bad'"),
        ("text,label\na,safe\nb,\n", r"row 2 \(line 3\): unknown label ''"),
        ("text,label\n  ,safe\n", r"row 1 \(line 2\): empty or whitespace-only"),
        ("text,label\na,safe,extra\n", r"row 1 \(line 2\): expected 2 fields"),
        ("text,label\na\n", r"row 1 \(line 2\): expected 2 fields"),
        ("id,text,label\n1,a,safe\n1,b,safe\n", r"row 2 \(line 3\): duplicate id '1'"),
        ("id,text,label\n ,a,safe\n", r"row 1 \(line 2\): invalid id"),
    ],
)
def test_csv_errors(tmp_path: Path, content: str, pattern: str) -> None:
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=r"bad\.csv: " + pattern):
        load_dataset(f"csv:{path}")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\u00e9,safe\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv.*UTF-8"):
        load_csv(path)
    bad_gz = tmp_path / "broken.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.jsonl\.gz: line 1: cannot read"):
        load_jsonl(bad_gz)


def _fake_data_dir(tmp_path: Path, oai_lines: list[str], xstest: str) -> Path:
    (tmp_path / "openai_moderation").mkdir()
    (tmp_path / "xstest").mkdir()
    with gzip.open(tmp_path / OPENAI_MODERATION_FILE, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(oai_lines) + "\n")
    _write(tmp_path / XSTEST_FILE, xstest)
    return tmp_path


def test_builtin_file_errors(tmp_path: Path) -> None:
    root = _fake_data_dir(
        tmp_path,
        ['{"prompt": "ok", "S": 0}', '{"prompt": "x", "S": 2}', '{"S": 1}'],
        "id,prompt,type,label\n1,hi,homonyms,safe\n2,yo,contrast_homonyms,risky\n",
    )
    with pytest.raises(DataError, match=r"samples-1680\.jsonl\.gz: line 2: flag 'S' is 2"):
        load_dataset("openai-moderation", root)
    with pytest.raises(DataError, match=r"xstest_prompts\.csv: row 2 \(line 3\): .*'risky'"):
        load_dataset("xstest", root)


def test_builtin_missing_prompt_and_column(tmp_path: Path) -> None:
    root = _fake_data_dir(tmp_path, ['{"prompt": "ok"}', '{"S": 1}'], "id,text,label\n1,hi,safe\n")
    with pytest.raises(DataError, match=r"samples-1680\.jsonl\.gz: line 2: missing field 'prompt'"):
        load_dataset("openai-moderation", root)
    with pytest.raises(DataError, match=r"xstest_prompts\.csv: line 1: missing column\(s\) 'prompt'"):
        load_dataset("xstest", root)


def test_jsonl_conversation_rows(tmp_path):
    """A JSONL line may give ``messages`` instead of ``text``; a bad turn names the line and the fix."""
    import json as _json

    from guardcal.data.loaders import load_jsonl
    from guardcal.errors import DataError

    good = tmp_path / "conv.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]
    good.write_text(_json.dumps({"messages": turns, "label": "safe"}) + "\n")
    (ex,) = load_jsonl(good)
    assert ex.messages == tuple(turns) and ex.text == "go away"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_json.dumps({"messages": [{"role": "system", "content": "x"}], "label": "safe"}) + "\n")
    with pytest.raises(DataError, match="line 1: messages\\[0\\].role is 'system'"):
        load_jsonl(bad)
    both = tmp_path / "both.jsonl"
    both.write_text(_json.dumps({"messages": turns, "text": "x", "label": "safe"}) + "\n")
    with pytest.raises(DataError, match="either 'text' or 'messages'"):
        load_jsonl(both)
