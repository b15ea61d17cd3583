"""Load the Safe/Unsafe datasets guardcal trains and evaluates on.

Dataset keys (see :data:`DATASET_KEYS` and :func:`describe_datasets`):

* ``openai-moderation[:all|train|calib|test]``: the OpenAI Moderation
  evaluation set (``openai_moderation/samples-1680.jsonl.gz`` under the data
  directory). A row is ``unsafe`` if any of the flags ``S, H, V, HR, SH, S3,
  H2, V2`` equals 1 (absent flags count as "not 1"), else ``safe``. Ids are
  ``oai-<i>`` with ``i`` the 0-based line number. ``train``/``calib``/``test``
  is a fixed, duplicate-aware split of 500/300/880 rows drawn with
  :data:`SPLIT_SEED` (see :mod:`guardcal.data.splits`).
* ``xstest[:all]``: XSTest v2 (``xstest/xstest_prompts.csv``), column
  ``label``; ids are ``xstest-<id>``.
* ``jsonl:PATH`` / ``csv:PATH``: any file (optionally gzipped, ``.gz``) with
  ``text`` and ``label`` columns; ``label`` is ``safe``/``unsafe`` (case and
  surrounding spaces ignored); ``id`` is used when present, else the 1-based
  line number (JSONL) or data-row number (CSV, header not counted). Other
  columns are ignored. ``PATH`` is relative to the current directory.
  A JSONL line may give ``messages`` (OpenAI chat shape: a list of
  ``{"role": "user"|"assistant", "content": text}``) instead of ``text``: a
  conversation, whose judged turn the prompt profile picks (``core.profiles``).

Every error is a :class:`~guardcal.errors.DataError` naming the file, the
1-based line/row and the fix.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

from guardcal.core.examples import LABELS, SAFE, UNSAFE, Example
from guardcal.data.splits import (
    SPLIT_NAMES,
    assign_splits,
    duplicate_groups,
)
from guardcal.errors import DataError

DATA_DIR_ENV: Final = "GUARDCAL_DATA_DIR"
#: the data directory when neither --data-dir nor $GUARDCAL_DATA_DIR is given, relative to the current
#: directory: a checkout beside ``shared/`` (the layout ``make`` assumes)
DEFAULT_DATA_DIR: Final = Path("..") / "shared" / "data"
_log = logging.getLogger("guardcal.data")
SPLIT_SEED: Final = 20260113
SPLIT_SIZES: Final[Mapping[str, int]] = {"train": 500, "calib": 300}

OPENAI_MODERATION: Final = "openai-moderation"
XSTEST: Final = "xstest"
OPENAI_MODERATION_FILE: Final = "openai_moderation/samples-1680.jsonl.gz"
XSTEST_FILE: Final = "xstest/xstest_prompts.csv"
OPENAI_FLAGS: Final = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")

DATASET_KEYS: Final[tuple[str, ...]] = (
    OPENAI_MODERATION,
    *(f"{OPENAI_MODERATION}:{part}" for part in ("all", *SPLIT_NAMES)),
    XSTEST,
    f"{XSTEST}:all",
    "jsonl:PATH",
    "csv:PATH",
)

_DESCRIPTIONS: Final[Mapping[str, str]] = {
    OPENAI_MODERATION: "OpenAI Moderation, all 1680 rows (same as :all)",
    f"{OPENAI_MODERATION}:train": "fixed 500-row training split",
    f"{OPENAI_MODERATION}:calib": "fixed 300-row calibration split",
    f"{OPENAI_MODERATION}:test": "the remaining 880 rows",
    XSTEST: "XSTest v2, all 450 prompts (same as :all)",
    "jsonl:PATH": "JSON Lines file with text and label (optional id) fields",
    "csv:PATH": "CSV file with text and label (optional id) columns",
}


def describe_datasets() -> str:
    """Return one line per dataset key, for ``--help`` texts."""
    lines = []
    for key in DATASET_KEYS:
        if key.endswith(":all"):
            continue
        lines.append(f"  {key:<26} {_DESCRIPTIONS[key]}")
    return "Dataset keys:\n" + "\n".join(lines)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """Return the data directory: ``data_dir``, else ``$GUARDCAL_DATA_DIR``, else ``../shared/data``
    (:data:`DEFAULT_DATA_DIR`, relative to the current directory) when that exists.

    Raises:
        DataError: if none of them is there, or the directory given does not exist.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        fallback = Path.cwd() / DEFAULT_DATA_DIR
        if fallback.is_dir():
            _log.info("%s is not set: using %s", DATA_DIR_ENV, fallback.resolve())
            return fallback.resolve()
        raise DataError(
            f"no data directory given and the default {DEFAULT_DATA_DIR} (relative to the current directory: "
            f"{fallback.resolve()}) does not exist: pass --data-dir DIR or set {DATA_DIR_ENV} "
            f"(e.g. {DATA_DIR_ENV}=/path/to/shared/data) to the folder holding {OPENAI_MODERATION_FILE} and "
            f"{XSTEST_FILE}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data directory {str(path)!r} does not exist or is not a directory: "
            f"pass --data-dir DIR or set {DATA_DIR_ENV} to an existing folder"
        )
    return path


def load_dataset(key: str, data_dir: str | Path | None = None) -> list[Example]:
    """Load the examples named by ``key`` (see the module docstring).

    ``data_dir`` is only needed (and only resolved) for the built-in datasets.

    Raises:
        DataError: unknown key or split, or a missing or malformed file.
    """
    name, sep, arg = key.partition(":")
    if name in ("jsonl", "csv") and sep:
        if not arg.strip():
            raise DataError(f"dataset key {key!r} needs a file path, e.g. {name}:data.{name}")
        path = Path(arg)
        return load_jsonl(path) if name == "jsonl" else load_csv(path)
    part = arg if sep else "all"
    if name == OPENAI_MODERATION and part in ("all", *SPLIT_NAMES):
        examples = load_openai_moderation(resolve_data_dir(data_dir))
        if part == "all":
            return examples
        indices = assign_splits([ex.text for ex in examples], seed=SPLIT_SEED, **_split_kwargs())[part]
        return [examples[i] for i in indices]
    if name == XSTEST and part == "all":
        return load_xstest(resolve_data_dir(data_dir))
    raise DataError(f"unknown dataset key {key!r}; valid keys: {', '.join(DATASET_KEYS)}")


def load_openai_moderation(data_dir: Path) -> list[Example]:
    """Load every row of the OpenAI Moderation file, in file order."""
    path = _builtin_file(data_dir, OPENAI_MODERATION_FILE)
    examples: list[Example] = []
    for line_no, record in _iter_jsonl(path):
        where = f"{path}: line {line_no}"
        if "prompt" not in record:
            raise DataError(f"{where}: missing field 'prompt' (the text to classify)")
        text = _check_text(record["prompt"], where, "prompt")
        unsafe = False
        for flag in OPENAI_FLAGS:
            value = record.get(flag)
            if value is not None and value not in (0, 1):
                raise DataError(f"{where}: flag {flag!r} is {value!r}; expected 0, 1 or absent")
            unsafe = unsafe or value == 1
        examples.append(Example(f"oai-{line_no - 1}", text, UNSAFE if unsafe else SAFE))
    return examples


def load_xstest(data_dir: Path) -> list[Example]:
    """Load all XSTest prompts, in file order."""
    path = _builtin_file(data_dir, XSTEST_FILE)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for where, row in _iter_csv(path, ("id", "prompt", "label")):
        raw_id = _check_id(row["id"], where)
        text = _check_text(row["prompt"], where, "prompt")
        example = Example(f"xstest-{raw_id}", text, _parse_label(row["label"], where))
        _append_unique(examples, seen, example, where)
    return examples


def load_jsonl(path: str | Path) -> list[Example]:
    """Load a JSON Lines file with ``text``, ``label`` and optional ``id`` fields."""
    path = Path(path)
    _require_file(path)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for line_no, record in _iter_jsonl(path):
        where = f"{path}: line {line_no}"
        if "text" in record and "messages" in record:
            raise DataError(f"{where}: give either 'text' or 'messages' (a conversation), not both")
        for field in ("text" if "messages" not in record else "messages", "label"):
            if field not in record:
                raise DataError(
                    f"{where}: missing field {field!r}; every line needs 'text' (or 'messages') and 'label' fields "
                    "('id' is optional)"
                )
        raw_id = _check_id(record["id"], where) if "id" in record else str(line_no)
        messages = _check_messages(record["messages"], where) if "messages" in record else None
        text = _check_text(messages[-1]["content"] if messages else record["text"], where, "text")
        _append_unique(
            examples,
            seen,
            Example(raw_id, text, _parse_label(record["label"], where), messages),
            where,
        )
    return examples


def load_csv(path: str | Path) -> list[Example]:
    """Load a CSV file with ``text``, ``label`` and optional ``id`` columns."""
    path = Path(path)
    _require_file(path)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for row_no, (where, row) in enumerate(_iter_csv(path, ("text", "label")), start=1):
        raw_id = _check_id(row["id"], where) if "id" in row else str(row_no)
        text = _check_text(row["text"], where, "text")
        _append_unique(
            examples,
            seen,
            Example(raw_id, text, _parse_label(row["label"], where)),
            where,
        )
    return examples


def split_manifest(data_dir: str | Path | None = None) -> dict[str, Any]:
    """Describe the OpenAI Moderation split: seed, sizes, ids and source hash."""
    root = resolve_data_dir(data_dir)
    examples = load_openai_moderation(root)
    texts = [ex.text for ex in examples]
    splits = assign_splits(texts, seed=SPLIT_SEED, **_split_kwargs())
    return {
        "dataset": OPENAI_MODERATION,
        "source_file": OPENAI_MODERATION_FILE,
        "source_sha256": file_sha256(root / OPENAI_MODERATION_FILE),
        "seed": SPLIT_SEED,
        "method": "group rows by normalised text (NFKC, casefold, drop Unicode "
        "punctuation/symbols, collapse whitespace); shuffle groups with "
        "numpy.random.default_rng(seed).permutation; assign whole groups "
        "greedily to train, then calib, then test",
        "total": len(examples),
        "sizes": {name: len(splits[name]) for name in SPLIT_NAMES},
        "unsafe": {name: sum(examples[i].label == UNSAFE for i in splits[name]) for name in SPLIT_NAMES},
        "duplicate_groups": [[examples[i].id for i in group] for group in duplicate_groups(texts)],
        "ids": {name: [examples[i].id for i in splits[name]] for name in SPLIT_NAMES},
    }


def write_split_manifest(path: str | Path, data_dir: str | Path | None = None) -> Path:
    """Write :func:`split_manifest` as indented JSON to ``path``; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(split_manifest(data_dir), indent=2, ensure_ascii=False)
    target.write_text(text + "\n", encoding="utf-8")
    return target


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _split_kwargs() -> dict[str, int]:
    return {"train_size": SPLIT_SIZES["train"], "calib_size": SPLIT_SIZES["calib"]}


def _builtin_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise DataError(
            f"expected file {relative} under the data directory {str(data_dir)!r} "
            f"but {str(path)!r} does not exist: point --data-dir / {DATA_DIR_ENV} "
            "at the shared data folder (the one containing openai_moderation/ and xstest/)"
        )
    return path


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(
            f"data file {str(path)!r} does not exist (relative paths are resolved "
            f"against the current directory {os.getcwd()!r}); check the path"
        )


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line number, object)``; blank lines are skipped."""
    line_no = 0
    try:
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}: line {line_no}: invalid JSON ({exc.msg}); every line must be one JSON object"
                    ) from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: line {line_no + 1}: cannot read the file ({exc}); it must be "
            "UTF-8 text (gzip-compressed if the name ends in .gz)"
        ) from exc


def _iter_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(location, row)`` per data row; location names file, row and line."""
    where = f"{path}: line 1"
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [col for col in required if col not in header]
            if missing:
                raise DataError(
                    f"{path}: line 1: missing column(s) {', '.join(map(repr, missing))}; "
                    f"the header has {header!r} but needs {list(required)!r}"
                )
            for row_no, row in enumerate(reader, start=1):
                where = f"{path}: row {row_no} (line {reader.line_num})"
                if None in row or None in row.values():
                    raise DataError(
                        f"{where}: expected {len(header)} fields like the header, "
                        f"got a different number; quote fields that contain commas"
                    )
                yield where, row
    except (UnicodeDecodeError, OSError, EOFError, csv.Error) as exc:
        raise DataError(
            f"{where}: cannot read the file ({exc}); it must be UTF-8 CSV with a "
            "header row (gzip-compressed if the name ends in .gz)"
        ) from exc


def _check_text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{where}: empty or whitespace-only text in {column!r} (got {value!r}); fill in the text or remove the row"
        )
    return value


def _check_messages(value: object, where: str) -> tuple[dict[str, Any], ...]:
    from guardcal.core.conversation import ConversationError, parse_turns

    try:
        turns = parse_turns(value, "messages")  # type: ignore[arg-type]
    except ConversationError as exc:
        raise DataError(f"{where}: {exc}") from None
    return tuple({"role": t.role, "content": t.content} for t in turns)


def _check_id(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise DataError(
            f"{where}: invalid id {value!r}; ids must be non-empty strings or integers "
            "(or drop the 'id' column to number rows automatically)"
        )
    return str(value).strip()


def _parse_label(value: object, where: str) -> str:
    label = value.strip().lower() if isinstance(value, str) else None
    if label is None or label not in LABELS:
        raise DataError(
            f"{where}: unknown label {value!r}; allowed values: "
            f"{', '.join(map(repr, LABELS))} (case and surrounding spaces are ignored)"
        )
    return label


def _append_unique(examples: list[Example], seen: dict[str, str], example: Example, where: str) -> None:
    if example.id in seen:
        raise DataError(f"{where}: duplicate id {example.id!r} (first used at {seen[example.id]}); ids must be unique")
    seen[example.id] = where
    examples.append(example)
