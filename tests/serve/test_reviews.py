"""Issue 22, item 1: the review queue and verdicts (``review`` scope), on the fake backend.

Escalations reach the review store through the outbox and the built-in ``review`` hook; verdicts are
recorded under the API key's name, idempotently, with every submission kept in the history.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3

import pytest

from guardcal.errors import ConfigError
from guardcal.serve import create_app
from guardcal.serve.reviews import read_reviews
from guardcal.serve.settings import parse_api_key_entries

pytestmark = pytest.mark.anyio

ALICE = "alice-review-key-0123456789"
BOB = "bob-review-key-0123456789abc"
INTERNAL = "internal-key-0123456789abcdef"
CLASSIFY = "classify-key-0123456789abcdef"
KEYS = f"{ALICE}:review@alice,{BOB}:review@bob,{INTERNAL}:internal,{CLASSIFY}:classify"
TEXTS = ["borderline joke", "unclear request", "I will hurt you", "hello there"]  # 0.62, 0.41 escalate at 0.9


def _settings(make_settings, **kw):
    return make_settings(api_keys=KEYS, reviews=True, escalate_below=0.9, **kw)


async def _escalate(kit, client, texts=TEXTS):
    results = []
    for text in texts:  # one request each: the queue is in request order (ties within a request: arrival)
        r = await client.post("/classify", json={"inputs": [text]}, headers=kit.bearer(CLASSIFY))
        assert r.status_code == 200, r.text
        results += r.json()["results"]
    return results


async def _queue(kit, client, key=ALICE, **params):
    r = await client.get("/reviews/queue", params=params, headers=kit.bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def _wait_queue(kit, client, n):
    for _ in range(500):
        body = await _queue(kit, client)
        if body["pending"] >= n:
            return body
        import anyio

        await anyio.sleep(0.01)
    raise AssertionError(f"the queue never held {n} items: {body}")


async def test_queue_lists_escalations_oldest_first_without_raw_scores(kit, make_settings):
    app = create_app(_settings(make_settings), kit.backend())
    async with kit.running(app) as client:
        results = await _escalate(kit, client)
        escalated = [r for r in results if r["action"] == "escalate"]
        assert [r["label"] for r in escalated] == ["unsafe", "safe"]
        body = await _wait_queue(kit, client, 2)
        items = body["items"]
        assert body["pending"] == 2 and body["next"] is None
        assert [i["id"] for i in items] == [r["id"] for r in escalated]
        first = items[0]
        assert first["input"] == "borderline joke" and first["label"] == "unsafe" and first["kind"] == "escalation"
        assert first["reason"] == "low_confidence" and first["confidence"] == 0.62 and first["age_s"] >= 0
        assert first["input_sha256"] == hashlib.sha256(b"borderline joke").hexdigest()
        assert not any("raw" in k or "p_unsafe" in k for i in items for k in i)
        page = await _queue(kit, client, limit=1)
        assert [i["id"] for i in page["items"]] == [first["id"]] and page["next"]
        rest = await _queue(kit, client, after=page["next"], limit=1)
        assert [i["id"] for i in rest["items"]] == [items[1]["id"]] and rest["next"] is None
        bad = await client.get("/reviews/queue", params={"after": "x"}, headers=kit.bearer(ALICE))
        assert bad.status_code == 422


async def test_verdicts_are_idempotent_keyed_by_reviewer_and_refuse_conflicts(kit, make_settings, tmp_path):
    settings = _settings(make_settings)
    app = create_app(settings, kit.backend())
    async with kit.running(app) as client:
        await _escalate(kit, client)
        items = (await _wait_queue(kit, client, 2))["items"]
        first, second = items[0]["id"], items[1]["id"]
        post = lambda body, key=ALICE: client.post("/reviews", json=body, headers=kit.bearer(key))  # noqa: E731
        r = await post({"id": first, "label": "safe", "note": "a joke"})
        assert r.status_code == 201, r.text
        assert r.json() == {"id": first, "label": "safe", "reviewer": "alice", "outcome": "recorded", "pending": 1}
        again = await post({"id": first, "label": "safe"}, BOB)
        assert again.status_code == 200 and again.json()["outcome"] == "repeat"
        assert again.json()["reviewer"] == "alice"  # the accepted verdict stays alice's
        conflict = await post({"id": first, "label": "unsafe"}, BOB)
        assert conflict.status_code == 409 and "'safe' (by alice)" in conflict.json()["error"]["message"]
        assert (await post({"id": "nope", "label": "safe"})).status_code == 404
        bad = await post({"id": second, "label": "maybe"})
        assert bad.status_code == 422 and "label" in bad.json()["error"]["message"]
        forged = await post({"id": second, "label": "unsafe", "reviewer": "mallory"})
        assert forged.status_code == 422 and "reviewer" in forged.json()["error"]["message"]
        assert (await post({"id": second, "label": "unsafe"}, INTERNAL)).status_code == 403
        assert (await post({"id": second, "label": "unsafe"}, CLASSIFY)).status_code == 403
        assert (await client.get("/reviews/queue", headers=kit.bearer(INTERNAL))).status_code == 403
        assert (await post({"id": second, "label": "unsafe"}, BOB)).status_code == 201
        assert (await _queue(kit, client))["pending"] == 0
    rows = read_reviews(settings.review_path())
    assert [(r["escalation_id"], r["verdict"], r["reviewer"], r["note"]) for r in rows] == [
        (first, "safe", "alice", "a joke"),
        (second, "unsafe", "bob", None),
    ]
    with sqlite3.connect(settings.review_path()) as conn:
        history = conn.execute("SELECT escalation_id, label, reviewer, outcome FROM review_history ORDER BY row_id")
        assert history.fetchall() == [
            (first, "safe", "alice", "recorded"),
            (first, "safe", "bob", "repeat"),
            (first, "unsafe", "bob", "conflict"),
            (second, "unsafe", "bob", "recorded"),
        ]


async def test_verdicts_and_pending_items_survive_a_restart(kit, make_settings):
    settings = _settings(make_settings)
    async with kit.running(create_app(settings, kit.backend())) as client:
        await _escalate(kit, client)
        items = (await _wait_queue(kit, client, 2))["items"]
        r = await client.post("/reviews", json={"id": items[0]["id"], "label": "unsafe"}, headers=kit.bearer(ALICE))
        assert r.status_code == 201
    async with kit.running(create_app(settings, kit.backend())) as client:
        body = await _queue(kit, client)
        assert [i["id"] for i in body["items"]] == [items[1]["id"]] and body["pending"] == 1
        r = await client.post("/reviews", json={"id": items[0]["id"], "label": "unsafe"}, headers=kit.bearer(BOB))
        assert r.status_code == 200 and r.json()["reviewer"] == "alice"


async def test_redacted_inputs_are_queued_as_their_hash(kit, make_settings):
    settings = _settings(make_settings, redact_input=True)
    async with kit.running(create_app(settings, kit.backend())) as client:
        await _escalate(kit, client, ["borderline joke"])
        (item,) = (await _wait_queue(kit, client, 1))["items"]
        assert "input" not in item and item["input_sha256"] == hashlib.sha256(b"borderline joke").hexdigest()
    with sqlite3.connect(settings.review_path()) as conn:
        assert conn.execute("SELECT input FROM review_items").fetchall() == [(None,)]


async def test_review_paths_need_a_review_key_even_from_loopback(kit, make_settings):
    async with kit.running(create_app(make_settings(reviews=True), kit.backend())) as client:
        r = await client.get("/reviews/queue")
        assert r.status_code == 403 and "KEY:review@NAME" in r.json()["error"]["message"]
        assert (await client.post("/classify", json={"input": "hello there"})).status_code == 200
    async with kit.running(create_app(_settings(make_settings), kit.backend())) as client:
        r = await client.get("/reviews/queue")
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
        basic = "Basic " + base64.b64encode(f"anyone:{ALICE}".encode()).decode()
        assert (await client.get("/reviews/queue", headers={"Authorization": basic})).status_code == 200
        # Basic auth is for the review surface only
        refused = await client.post("/classify", json={"input": "x"}, headers={"Authorization": basic})
        assert refused.status_code == 401
        # a browser's Basic credentials cannot post a verdict cross-site or as a form
        body = {"id": "x", "label": "safe"}
        cross = await client.post(
            "/reviews", json=body, headers={"Authorization": basic, "Origin": "https://evil.test"}
        )
        assert cross.status_code == 403
        form = await client.post("/reviews", data=body, headers={"Authorization": basic})
        assert form.status_code in (415, 422)


async def test_review_paths_are_404_without_reviews(kit, make_settings):
    app = create_app(make_settings(api_keys=KEYS), kit.backend())
    async with kit.running(app) as client:
        r = await client.get("/reviews/queue", headers=kit.bearer(ALICE))
        assert r.status_code == 404 and "--reviews" in r.json()["error"]["message"]


def test_key_names():
    entries = parse_api_key_entries(f"{ALICE}:review@alice, {INTERNAL}:internal@ops\n{CLASSIFY}:classify")
    assert entries == {ALICE: ("review", "alice"), INTERNAL: ("internal", "ops"), CLASSIFY: ("classify", None)}
    with pytest.raises(ConfigError, match="review key without a name"):
        parse_api_key_entries(f"{ALICE}:review")
    with pytest.raises(ConfigError, match="bad name"):
        parse_api_key_entries(f"{ALICE}:review@al ice!")
