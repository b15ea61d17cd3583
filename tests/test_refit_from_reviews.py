"""Issue 22, item 5: ``guardcal calibrate --reviews DB`` and ``guardcal data export-reviews``.

The fit set is the shipped guard's own scored calibration split (``results/guard/eval``, reused with
``--predictions``); the review store is written by the server's own store class, with verdicts on
escalations (weight 1) and audit samples (weight 1/p), some read by another model or failed closed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.cli import main
from guardcal.data.loaders import load_dataset
from guardcal.serve.reviews import ReviewStore

ROOT = Path(__file__).parents[1]
PREDICTIONS = ROOT / "results" / "guard" / "eval"
IDENTITY_KEYS = ("model_id", "adapter_hash", "mode", "prompt_fingerprint", "label_spec")
#: a raw P(unsafe) that the plain refit of the shipped guard's calibration split allows on its own
CONFIDENT_RAW = 0.01


def _identity() -> dict:
    run = json.loads((PREDICTIONS / "run.json").read_text())
    return {k: run[k] for k in IDENTITY_KEYS}


def _payload(i: int, *, p_raw, reason="low_confidence", prob=1.0, model=None, text=None, when="2026-11-02"):
    label = "unsafe" if (p_raw or 0.5) >= 0.5 else "safe"
    body = {
        "id": f"e{i}", "label": label, "action": "escalate" if reason != "audit" else "allow", "reason": reason,
        "sampling_probability": prob, "confidence": None if p_raw is None else max(p_raw, 1 - p_raw),
        "p_unsafe_raw": p_raw, "model": model or _identity(), "model_version": "m-x", "policy_version": "p-x",
        "timestamp": f"{when}T10:00:{i % 60:02d}.000+00:00",
    }  # fmt: skip
    body["input" if text is not None or i % 7 else "input_sha256"] = text or (f"text {i}" if i % 7 else "ab" * 32)
    return body


def _store(path: Path, audit_prob: float) -> None:
    """30 audit samples read as confidently safe (raw CONFIDENT_RAW) that reviewers found unsafe, 20 escalations, and
    verdicts the refit must leave out (another model; a fail-closed escalation without a score)."""

    async def fill() -> None:
        store = ReviewStore(path)
        store.open()
        items = [(_payload(i, p_raw=CONFIDENT_RAW, reason="audit", prob=audit_prob, when="2026-11-03"), "unsafe")
                 for i in range(30)]  # fmt: skip
        items += [(_payload(100 + i, p_raw=0.45 + 0.01 * i), "unsafe" if i % 2 else "safe") for i in range(20)]
        items += [(_payload(200, p_raw=0.3, model={**_identity(), "model_id": "other"}), "safe")]
        items += [(_payload(201, p_raw=None, reason="backend_error"), "unsafe")]
        for payload, verdict in items:
            await store.add(payload)
            await store.record(payload["id"], verdict, "alice", None)
        store.close()

    asyncio.run(fill())


def _calibrate(tmp_path: Path, name: str, *extra: str) -> CalibrationBundle:
    out = tmp_path / f"{name}.json"
    args = ["calibrate", "--predictions", str(PREDICTIONS), "--method", "platt", "--output", str(out),
            "--target-error", "0.1", "--target-error-unsafe", "0.2", "--threshold-share", "0.667",
            "--eval-dataset", "openai-moderation:test", *extra]  # fmt: skip
    assert main(args) == 0
    return CalibrationBundle.load(out)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refit")
    audit_db, escalated_db = tmp / "audit.sqlite3", tmp / "escalated.sqlite3"
    _store(audit_db, audit_prob=0.25)
    _store(escalated_db, audit_prob=1.0)  # the same verdicts, as if each had been certain to be sampled
    return {
        "plain": _calibrate(tmp, "plain"),
        "audit": _calibrate(tmp, "audit", "--reviews", str(audit_db)),
        "p1": _calibrate(tmp, "p1", "--reviews", str(escalated_db)),
        "db": audit_db,
    }


def test_the_bundle_records_which_verdicts_were_used(bundles):
    reviews = bundles["audit"].extra["reviews"]
    assert reviews["source"].endswith("audit.sqlite3") and reviews["used"] == 50
    assert reviews["skipped"] == {"other_setting": 1, "no_score": 1}
    audit, escalation = reviews["by_kind"]["audit"], reviews["by_kind"]["escalation"]
    assert (audit["n"], audit["weight_sum"], escalation["n"], escalation["weight_sum"]) == (30, 120.0, 20, 20.0)
    assert audit["requests"] == ["2026-11-03T10:00:00+00:00", "2026-11-03T10:00:29+00:00"]
    assert escalation["requests"][0].startswith("2026-11-02") and len(audit["reviewed"]) == 2
    assert "plain" not in bundles or "reviews" not in bundles["plain"].extra
    extra = bundles["audit"].extra
    assert extra["fit_n"] == 300 + 50 and extra["calibrator_n"] + extra["threshold_n"] == 350
    ids = extra["split"]["calibrator_ids"] + extra["split"]["threshold_ids"]
    assert sum(i.startswith("review:") for i in ids) == 50


def test_verdicts_weighted_by_inverse_sampling_probability_move_the_calibration(bundles):
    at = np.array([CONFIDENT_RAW])
    plain, p1, audit = (bundles[k].calibrator().predict(at)[0] for k in ("plain", "p1", "audit"))
    # reviewers found the confidently-safe audit samples unsafe: P(unsafe) at their raw score rises, four times as
    # much evidence when each audit verdict stands for 1/p = 4 confident decisions
    assert plain < p1 < audit
    assert audit - plain > 2 * (p1 - plain) > 0
    # where reviewers found the confident mistakes, the refit no longer decides on its own
    fitted = {k: bundles[k] for k in ("plain", "p1", "audit")}
    auto = {k: bool(b.get_thresholds().auto_mask(b.calibrator().predict(at))[0]) for k, b in fitted.items()}
    assert auto == {"plain": True, "p1": False, "audit": False}
    coverage = {k: bundles[k].extra["escalation"]["openai-moderation:test"]["coverage"] for k in ("plain", "audit")}
    assert coverage["audit"] < coverage["plain"]


def test_export_reviews_writes_training_jsonl(bundles, tmp_path, capsys):
    out = tmp_path / "reviewed.jsonl"
    assert main(["data", "export-reviews", str(bundles["db"]), "--output", str(out)]) == 0
    said = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    redacted = sum(1 for i in [*range(30), *range(100, 120), 200, 201] if i % 7 == 0)
    assert len(rows) == 52 - redacted and f"{redacted} left out" in said
    examples = load_dataset(f"jsonl:{out}")  # what guardcal train --dataset jsonl:FILE reads
    assert len(examples) == len(rows) and {e.label for e in examples} <= {"safe", "unsafe"}
    first = next(r for r in rows if r["id"] == "review-e1")
    assert first == {"id": "review-e1", "text": "text 1", "label": "unsafe"}


def test_a_store_without_usable_verdicts_is_refused(tmp_path, capsys):
    async def fill() -> None:
        store = ReviewStore(tmp_path / "r.sqlite3")
        store.open()
        await store.add(_payload(1, p_raw=0.3, model={**_identity(), "adapter_hash": "sha256:other"}))
        await store.record("e1", "safe", "alice", None)
        store.close()

    asyncio.run(fill())
    args = ["calibrate", "--predictions", str(PREDICTIONS), "--output", str(tmp_path / "b.json"),
            "--reviews", str(tmp_path / "r.sqlite3")]  # fmt: skip
    assert main(args) == 2
    assert "no verdict this refit can use (1 were read by another model" in capsys.readouterr().err
