"""No score leaves the server except to hooks, the DEBUG audit log and internal-scope callers.

Every endpoint and error path is exercised; headers, bodies and INFO log lines are searched for
score words and float-looking numbers. Only the internal scope's 200 body may hold a (rounded)
``confidence``; the opaque id fields are exempt from the number search.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest

from guardcal.serve import create_app
from guardcal.serve.service import WARM_UP_TEXT

pytestmark = pytest.mark.anyio

WORDS = ("p_unsafe", "prob", "logit", "margin", "confidence")
# a float standing alone (not inside a hex id or a version string), or nan/inf
FLOAT = re.compile(
    r"(?<![\w.])\d*\.\d+(?:[eE][-+]?\d+)?(?![\w.])|(?<![\w.])\d+[eE][-+]?\d+(?![\w.])|\bnan\b|\binf\b",
    re.IGNORECASE,
)
ID_FIELDS = {"id", "request_id", "model_version", "policy_version"}


def _strip_ids(value):
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k not in ID_FIELDS}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def assert_clean(response: httpx.Response, *, confidence_allowed: bool = False, body: bool = True) -> None:
    for name, value in response.headers.items():
        text = f"{name}: {value}".lower()
        assert not any(w in text for w in WORDS), text
        if name != "content-type":
            assert not FLOAT.search(value), text
    if not body:
        return
    data = _strip_ids(response.json())
    text = json.dumps(data).lower()
    words = [w for w in WORDS if not (confidence_allowed and w == "confidence")]
    assert not any(w in text for w in words), text
    if not confidence_allowed:
        assert not FLOAT.search(text), text
    else:
        for verdict in data.get("results", [data]):
            assert set(verdict) <= {"label", "action", "confidence", "results"}
            c = verdict.get("confidence")
            assert c is None or round(c, 2) == c


@pytest.fixture
def backend_for(kit):
    def make(release: asyncio.Event | None = None, fail: bool = False):
        table = kit.table_handler()

        async def handler(texts):
            if texts == [WARM_UP_TEXT]:
                return table(texts)
            if fail:
                raise RuntimeError("scores 0.9731 and logit 3.2 exploded")
            if release is not None:
                await release.wait()
            return table(texts)

        return kit.backend(handler)

    return make


async def test_every_path_is_free_of_scores(kit, make_settings, backend_for, caplog):
    caplog.set_level(logging.INFO)
    settings = make_settings(api_keys=kit.KEYS, max_input_chars=50, max_request_batch=2, queue_size=1)
    release = asyncio.Event()
    app = create_app(settings, backend_for(release))
    ok, internal = kit.bearer(kit.CLASSIFY_KEY), kit.bearer(kit.INTERNAL_KEY)
    good = {"inputs": ["borderline joke", "I will hurt you"]}
    async with kit.running(app) as client:
        release.set()
        assert_clean(r := await client.post("/classify", json=good, headers=ok))
        assert r.status_code == 200
        assert_clean(r := await client.post("/classify", json={"input": "unclear request"}, headers=ok))
        assert_clean(r := await client.post("/classify", json=good, headers=internal), confidence_allowed=True)
        assert "confidence" in r.json()["results"][0]
        for path, payload, code in [
            ("/classify", {"input": "x"}, 401),
            ("/classify", {"input": "a" * 51}, 413),
            ("/classify", {"inputs": ["a", "b", "c"]}, 422),
            ("/classify", {"input": 0.5137}, 422),
            ("/classify", {"input": "x", "extra_field": 0.61}, 422),
        ]:
            headers = {} if code == 401 else ok
            r = await client.post(path, json=payload, headers=headers)
            assert r.status_code == code
            assert_clean(r)
        release.clear()
        first = asyncio.create_task(client.post("/classify", json={"input": "hello there"}, headers=ok))
        await kit.wait_for(lambda: app.state.service.admission.admitted == 1)
        r = await client.post("/classify", json={"input": "hello there"}, headers=ok)
        assert r.status_code == 429
        assert_clean(r)
        release.set()
        assert_clean(await first)
        for path in ("/healthz", "/readyz", "/nope"):
            assert_clean(await client.get(path))
        assert_clean(await client.get("/metrics", headers=ok))  # 403
        assert_clean(await client.get("/metrics", headers=internal), body=False)
    assert_logs_clean(caplog, kit)


async def test_backend_error_and_not_ready_are_free_of_scores(kit, make_settings, backend_for, caplog):
    caplog.set_level(logging.INFO)
    app = create_app(make_settings(), backend_for(fail=True))
    async with kit.client_for(app) as client:
        assert_clean(r := await client.post("/classify", json={"input": "hello there"}))
        assert r.status_code == 503
        async with app.router.lifespan_context(app):
            r = await client.post("/classify", json={"inputs": ["hello there", "borderline joke"]})
            assert r.status_code == 200 and {v["action"] for v in r.json()["results"]} == {"escalate"}
            assert_clean(r)
    messages = " ".join(rec.getMessage() for rec in caplog.records)
    assert "0.9731" not in messages and "exploded" not in messages
    assert_logs_clean(caplog, kit)


def assert_logs_clean(caplog: pytest.LogCaptureFixture, kit) -> None:
    values = set()
    for p in kit.TEXT_SCORES.values():
        values |= {f"{p}", f"{1 - p}", f"{round(1 - p, 2)}", f"{max(p, 1 - p):.2f}"}
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert info, "expected some INFO lines"
    for record in info:
        message = record.getMessage()
        assert record.name != "guardcal.audit"
        assert not any(v in message for v in values), message
        if record.name.startswith("guardcal"):
            assert not FLOAT.search(message), message
            assert not any(w in message.lower() for w in ("p_unsafe", "prob", "logit", "margin")), message


async def test_every_route_scope_and_refusal_is_free_of_scores(kit, make_settings, backend_for, caplog):
    """Every route the app has (enumerated, so a new endpoint is covered), under every caller
    scope, plus the body-level refusals (400/413/422): no score in a body, header or INFO line."""
    caplog.set_level(logging.INFO)
    app = create_app(make_settings(api_keys=kit.KEYS, max_input_chars=50, max_request_batch=2), backend_for())
    routes = sorted((r.path, m) for r in app.routes for m in (getattr(r, "methods", None) or ()) if m != "HEAD")
    assert {("/classify", "POST"), ("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET")} <= set(routes)
    scopes = {
        "none": {},
        "wrong": kit.bearer("wrong-key-0123456789abcdef"),
        "classify": kit.bearer(kit.CLASSIFY_KEY),
        "internal": kit.bearer(kit.INTERNAL_KEY),
    }
    raw = [
        b'{"input": "caf\xe9"}',  # 400 not UTF-8
        b'{"input": "x", "metadata": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # 400 too deep (or 413)
        b'{"input": 1' + b"0" * 5000 + b"}",  # 400 too many digits
        b'{"input": "\\ud800"}',  # 422 lone surrogate
        b"",  # 422 empty
        b"[0.93, 0.07]",  # 422 not an object (floats in, none echoed)
        b'{"input": "borderline joke", "threshold": 0.62}',  # 422 unknown field (named, value not echoed)
    ]
    seen = set()
    async with kit.running(app) as client:
        for scope, headers in scopes.items():
            for path, method in routes:
                body = {"json": {"inputs": ["borderline joke", "I will hurt you"]}} if method == "POST" else {}
                r = await client.request(method, path, headers=headers, **body)
                seen.add(r.status_code)
                metrics_text = path == "/metrics" and r.status_code == 200
                allowed = scope == "internal" and path == "/classify" and r.status_code == 200
                assert_clean(r, confidence_allowed=allowed, body=not metrics_text)
            for content in raw:
                r = await client.post(
                    "/classify", content=content, headers={**headers, "content-type": "application/json"}
                )
                seen.add(r.status_code)
                assert_clean(r)
    assert {200, 400, 401, 403, 422} <= seen
    assert_logs_clean(caplog, kit)
