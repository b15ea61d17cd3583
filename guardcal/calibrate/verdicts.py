"""Reviewers' verdicts as labelled rows: for refits (``guardcal calibrate --reviews``) and exports.

The review store (``guardcal serve --reviews``, :mod:`guardcal.serve.reviews`) keeps each escalation and
audit sample with the raw P(unsafe) the server read, the setting that read it, and the accepted verdict.
A refit uses a verdict as one more labelled row of the fit set, with that raw P(unsafe) as its score
(no rescoring: the text may be redacted), weighted by the inverse of its sampling probability: 1 for an
escalation (every one of the low-confidence band goes to review), ``1 / p`` for an audit sample drawn with
probability ``p`` from the confident decisions. Together they then stand for the traffic the server saw.
Only verdicts read by the same model, adapter, prompt, labels and mode as the fit set are used.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guardcal.errors import ConfigError

ITEM_COLUMNS = (
    "seq", "escalation_id", "kind", "reason", "label", "action", "confidence", "p_unsafe_raw",
    "sampling_probability", "input", "input_sha256", "model", "model_version", "policy_version", "created_at",
)  # fmt: skip
IDENTITY_FIELDS = ("model_id", "adapter_hash", "mode", "prompt_fingerprint", "label_spec")


def reviewed_rows(conn: sqlite3.Connection, where: tuple[str, tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
    """Items joined with their accepted verdict (``verdict``, ``reviewer``, ``note``, ``reviewed_at``), by seq;
    ``where`` is an SQL condition on ``i`` (the item) and its parameters."""
    condition, params = where if where is not None else ("1", ())
    cur = conn.execute(
        f"SELECT {', '.join('i.' + c for c in ITEM_COLUMNS)}, v.label, v.reviewer, v.note, v.created_at "
        f"FROM review_items i JOIN review_verdicts v ON v.escalation_id = i.escalation_id WHERE {condition} "
        "ORDER BY i.seq",
        params,
    )
    names = (*ITEM_COLUMNS, "verdict", "reviewer", "note", "reviewed_at")
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def read_reviews(path: str | Path) -> list[dict[str, Any]]:
    """The reviewed items of a review file (``reviews.sqlite3`` of ``guardcal serve --reviews``), read-only."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"review store {source} does not exist; pass the reviews.sqlite3 of guardcal serve")
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            return reviewed_rows(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{source} is not a guardcal review store ({exc})") from None


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def verdict_fit_rows(
    reviews: Sequence[Mapping[str, Any]], identity: Mapping[str, Any], source: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit rows (``id``, ``label``, ``p_unsafe`` raw, ``weight``, ``kind``) of the verdicts read with ``identity``,
    and their provenance for the bundle (counts, weights and date ranges by kind; what was left out and why)."""
    wanted = {k: _plain(identity[k]) for k in IDENTITY_FIELDS}
    rows: list[dict[str, Any]] = []
    skipped = {"other_setting": 0, "no_score": 0}
    for r in reviews:
        model = json.loads(r["model"] or "{}")
        if {k: _plain(model.get(k)) for k in IDENTITY_FIELDS} != wanted:
            skipped["other_setting"] += 1
        elif r["p_unsafe_raw"] is None:
            skipped["no_score"] += 1  # failed closed: nothing was read
        else:
            weight = 1.0 / float(r["sampling_probability"]) if r["kind"] == "audit" else 1.0
            rows.append(
                {"id": f"review:{r['escalation_id']}", "label": r["verdict"], "p_unsafe": float(r["p_unsafe_raw"]),
                 "weight": weight, "kind": r["kind"], "created_at": r["created_at"], "reviewed_at": r["reviewed_at"]}
            )  # fmt: skip
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in ("escalation", "audit"):
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            by_kind[kind] = {
                "n": len(mine),
                "weight_sum": sum(r["weight"] for r in mine),
                "requests": [_day(min(r["created_at"] for r in mine)), _day(max(r["created_at"] for r in mine))],
                "reviewed": [_day(min(r["reviewed_at"] for r in mine)), _day(max(r["reviewed_at"] for r in mine))],
            }
    provenance = {
        "source": source,
        "used": len(rows),
        "by_kind": by_kind,
        "skipped": skipped,
        "weighting": "escalation 1, audit 1/p (p: its sampling probability)",
    }
    return rows, provenance


def export_rows(reviews: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """JSONL rows (``id``, ``text``, ``label``) that ``guardcal train --dataset jsonl:FILE`` reads, and how many
    verdicts were left out because the server kept only the input's hash (``--redact-input``)."""
    out, redacted = [], 0
    for r in reviews:
        if r["input"] is None:
            redacted += 1
            continue
        out.append({"id": f"review-{r['escalation_id']}", "text": r["input"], "label": r["verdict"]})
    return out, redacted
