"""HTTP semantics of /classify, /healthz, /readyz and /metrics (in-process, FakeBackend)."""

from __future__ import annotations

import asyncio

import pytest

from guardcal.serve import FakeBackend, create_app
from guardcal.serve.service import WARM_UP_TEXT

pytestmark = pytest.mark.anyio


async def test_single_input_shape(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"input": "hello there", "request_id": "req-1"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "label", "action", "request_id", "model_version", "policy_version"}
    assert (body["label"], body["action"], body["request_id"]) == ("safe", "allow", "req-1")
    assert body["model_version"].startswith("m-") and body["policy_version"].startswith("p-")
    assert r.headers["cache-control"] == "no-store"


async def test_batch_shape_keeps_order(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    texts = ["hello there", "I will hurt you", "borderline joke"]
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"inputs": texts, "metadata": {"tenant": "a"}})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"results", "model_version", "policy_version"}
    assert [(v["label"], v["action"]) for v in body["results"]] == [
        ("safe", "allow"),
        ("unsafe", "block"),
        ("unsafe", "escalate"),
    ]
    assert len({v["id"] for v in body["results"]}) == 3
    assert all(set(v) == {"id", "label", "action"} for v in body["results"])


@pytest.mark.parametrize(
    "payload",
    [
        {"input": "x", "unknown": 1},
        {"input": 3},
        {"inputs": []},
        {"inputs": "not a list"},
        {"input": "a", "inputs": ["b"]},
        {},
        {"input": "x", "request_id": "r" * 129},
        {"input": "x", "metadata": {"k": 1}},
        {"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}},
    ],
)
async def test_invalid_requests_are_422_with_error_shape(kit, make_settings, payload):
    app = create_app(make_settings(), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json=payload)
    assert r.status_code == 422
    err = r.json()
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "code"}
    assert err["error"]["code"] == 422 and err["error"]["type"] == "invalid_request"


async def test_unknown_field_is_named(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"input": "x", "polcy": "strict"})
    assert "polcy" in r.json()["error"]["message"]


async def test_malformed_json_is_422(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == 422


async def test_oversized_batch_is_422_naming_the_limit(kit, make_settings):
    app = create_app(make_settings(max_request_batch=4), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"inputs": ["a"] * 5})
    assert r.status_code == 422
    assert "limit is 4" in r.json()["error"]["message"]


async def test_long_input_is_413_naming_the_limit(kit, make_settings):
    app = create_app(make_settings(max_input_chars=100), kit.backend())
    async with kit.running(app) as client:
        ok = await client.post("/classify", json={"input": "a" * 100})
        r = await client.post("/classify", json={"inputs": ["short", "a" * 101]})
    assert ok.status_code == 200
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large"
    assert "limit is 100" in r.json()["error"]["message"] and "input 1" in r.json()["error"]["message"]


async def test_huge_body_is_413_before_parsing(kit, make_settings):
    app = create_app(make_settings(max_input_chars=10, max_request_batch=1), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"input": "a" * 200_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}, {"Authorization": "x"}]
)
async def test_missing_or_wrong_key_is_401(kit, make_settings, headers):
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"input": "hello there"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "unauthorized"


async def test_unauthenticated_unknown_fields_get_401_not_schema_hints(kit, make_settings):
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend())
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"input": "x", "bogus": 1})
    assert r.status_code == 401


async def test_classify_scope_has_no_confidence_internal_has_two_decimals(kit, make_settings):
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend())
    texts = {"inputs": ["hello there", "borderline joke", "I will hurt you"]}
    async with kit.running(app) as client:
        plain = await client.post("/classify", json=texts, headers=kit.bearer(kit.CLASSIFY_KEY))
        internal = await client.post("/classify", json=texts, headers=kit.bearer(kit.INTERNAL_KEY))
        single = await client.post("/classify", json={"input": "hello there"}, headers=kit.bearer(kit.INTERNAL_KEY))
    assert plain.status_code == internal.status_code == 200
    assert all("confidence" not in v for v in plain.json()["results"])
    confidences = [v["confidence"] for v in internal.json()["results"]]
    assert confidences == [0.98, 0.62, 0.97]  # no bundle: identity calibration, max(p, 1-p) rounded
    assert single.json()["confidence"] == 0.98


async def test_without_keys_only_loopback_callers_are_served(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    async with app.router.lifespan_context(app):
        async with kit.client_for(app, "10.1.2.3") as remote, kit.client_for(app, "::1") as local6:
            far = await remote.post("/classify", json={"input": "hello there"})
            near = await local6.post("/classify", json={"input": "hello there"})
            health = await remote.get("/healthz")
    assert far.status_code == 403 and far.json()["error"]["type"] == "forbidden"
    assert near.status_code == 200
    assert health.status_code == 200


async def test_insecure_serves_remote_callers_with_classify_scope(kit, make_settings):
    app = create_app(make_settings(host="0.0.0.0", insecure=True), kit.backend())
    async with app.router.lifespan_context(app):
        async with kit.client_for(app, "10.1.2.3") as remote:
            r = await remote.post("/classify", json={"input": "hello there"})
    assert r.status_code == 200 and "confidence" not in r.json()


class GatedBackend(FakeBackend):
    """A fake whose start() waits for a gate (a model still loading)."""

    def __init__(self, handler, gate: asyncio.Event) -> None:
        super().__init__(handler)
        self.gate = gate

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


async def test_readyz_is_503_until_the_backend_is_ready(kit, make_settings):
    gate = asyncio.Event()
    app = create_app(make_settings(), GatedBackend(kit.table_handler(), gate))
    async with kit.client_for(app) as client:
        assert (await client.get("/readyz")).status_code == 503  # lifespan not started
        done = asyncio.Event()

        async def lifespan() -> None:
            async with app.router.lifespan_context(app):
                await done.wait()

        task = asyncio.create_task(lifespan())
        await asyncio.sleep(0.05)
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert (await client.get("/healthz")).status_code == 200
        busy = await client.post("/classify", json={"input": "hello there"})
        assert busy.status_code == 503 and busy.json()["error"]["type"] == "not_ready"
        gate.set()
        await kit.wait_for(lambda: app.state.service is not None and app.state.service.ready)
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        done.set()
        await task
        assert (await client.get("/readyz")).status_code == 503  # after shutdown


async def test_metrics_show_guardcal_counters(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    async with kit.running(app) as client:
        await client.post("/classify", json={"inputs": ["hello there", "borderline joke", "I will hurt you"]})
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'guardcal_requests_total{action="allow",label="safe"} 1.0' in text
    assert 'guardcal_requests_total{action="block",label="unsafe"} 1.0' in text
    assert 'guardcal_escalations_total{reason="low_confidence"} 1.0' in text
    assert "guardcal_request_latency_seconds_count 1.0" in text
    assert "guardcal_batch_size_count 1.0" in text
    assert "guardcal_confidence_count 3.0" in text
    for name in ("guardcal_queue_depth", "guardcal_outbox_depth", "guardcal_hook_deliveries_total"):
        assert name in text


async def test_metrics_need_internal_scope_when_keys_are_set(kit, make_settings):
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend())
    async with kit.running(app) as client:
        none = await client.get("/metrics")
        plain = await client.get("/metrics", headers=kit.bearer(kit.CLASSIFY_KEY))
        internal = await client.get("/metrics", headers=kit.bearer(kit.INTERNAL_KEY))
    assert (none.status_code, plain.status_code, internal.status_code) == (401, 403, 200)


async def test_full_queue_answers_429_with_retry_after(kit, make_settings):
    release = asyncio.Event()

    async def slow(texts):
        if texts != [WARM_UP_TEXT]:
            await release.wait()
        return kit.scores(*([0.02] * len(texts)))

    app = create_app(make_settings(queue_size=1), kit.backend(slow))
    async with kit.running(app) as client:
        first = asyncio.create_task(client.post("/classify", json={"input": "hello there"}))
        await kit.wait_for(lambda: app.state.service.admission.admitted == 1)
        second = await client.post("/classify", json={"input": "hello there"})
        release.set()
        first_response = await first
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["type"] == "rate_limited"
    assert first_response.status_code == 200


async def test_timeout_fails_closed_not_5xx(kit, make_settings):
    async def stuck(texts):
        if texts != [WARM_UP_TEXT]:
            await asyncio.sleep(5)
        return kit.scores(*([0.02] * len(texts)))

    app = create_app(make_settings(request_timeout_s=0.1), kit.backend(stuck))
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"input": "hello there"})
    assert r.status_code == 200 and (r.json()["label"], r.json()["action"]) == ("unsafe", "escalate")


async def test_unknown_path_and_method_use_error_shape(kit, make_settings):
    app = create_app(make_settings(), kit.backend())
    async with kit.running(app) as client:
        missing = await client.get("/nope")
        wrong = await client.get("/classify")
        docs = await client.get("/docs")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == 405
    assert docs.status_code == 404  # docs only in dev mode


async def test_dev_mode_serves_docs(kit, make_settings):
    app = create_app(make_settings(dev=True), kit.backend())
    async with kit.running(app) as client:
        assert (await client.get("/openapi.json")).status_code == 200
