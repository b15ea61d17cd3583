"""End to end: escalations reach a real HTTP receiver, signed (Standard Webhooks), across failures and a restart.

The receiver is one real uvicorn server on 127.0.0.1 (a free port) in a thread; it answers 500
to its first N deliveries and checks every signature with the ``standardwebhooks`` package.
The guardcal app runs in-process (ASGI) with the real webhook hook. Delivery is at-least-once;
in these runs (no lost 2xx) every escalation arrives once, which the tests count.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guardcal.serve import create_app

pytestmark = pytest.mark.anyio
SECRET = "whsec_" + base64.b64encode(b"webhook-secret-for-tests-32bytes").decode()


class Receiver:
    """Counts deliveries; the first ``fail_first`` get a 500; checks every signature."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_first = 0
        self.attempts = 0
        self.accepted: list[dict] = []
        self.bad_signatures = 0
        self.port = 0

    def reset(self, fail_first: int) -> None:
        with self.lock:
            self.fail_first, self.attempts, self.accepted, self.bad_signatures = fail_first, 0, [], 0

    def recover(self) -> None:
        with self.lock:
            self.fail_first = 0

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.attempts += 1
            try:
                payload = Webhook(SECRET).verify(body, dict(request.headers))
            except WebhookVerificationError:
                self.bad_signatures += 1
                return Response(status_code=401)
            if payload["id"] != request.headers["webhook-id"]:
                self.bad_signatures += 1
                return Response(status_code=400)
            if self.attempts <= self.fail_first:
                return Response(status_code=500)
            self.accepted.append(payload)
        return Response(status_code=204)

    def ids(self) -> list[str]:
        with self.lock:
            return [p["id"] for p in self.accepted]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.endpoint, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    rec.port = server.servers[0].sockets[0].getsockname()[1]
    yield rec
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def webhook_settings(make_settings, receiver):
    def make(**kw):
        return make_settings(
            webhook_url=f"http://127.0.0.1:{receiver.port}/hook",
            webhook_secret=SECRET,
            hooks="webhook",
            **kw,
        )

    return make


async def classify_all(client, texts: list[str]) -> list[str]:
    r = await client.post("/classify", json={"inputs": texts})
    assert r.status_code == 200
    return [v["id"] for v in r.json()["results"] if v["action"] == "escalate"]


async def test_every_escalation_arrives_once_after_failures(kit, receiver, webhook_settings):
    receiver.reset(fail_first=5)
    backend = kit.backend(kit.table_handler(default=0.6))  # unknown texts are low-confidence
    app = create_app(webhook_settings(webhook_retries=0), backend)  # every 500 goes back to the outbox
    async with kit.running(app) as client:
        registry = app.state.service.metrics.registry
        sent = await classify_all(client, [f"case {i}" for i in range(4)])
        sent += await classify_all(client, ["case 4", "hello there", "case 5"])
        assert len(sent) == 6
        await kit.wait_for(lambda: len(receiver.ids()) >= 6)
        await kit.wait_for(lambda: registry.get_sample_value("guardcal_outbox_depth") == 0)
        await asyncio.sleep(0.2)  # a duplicate would have time to arrive
        rows = await app.state.service.outbox.rows()
        metrics = (await client.get("/metrics")).text
    ids = receiver.ids()
    assert sorted(ids) == sorted(sent) and len(set(ids)) == len(ids)  # count in = count out, unique
    assert receiver.attempts >= 6 + 5 and receiver.bad_signatures == 0
    assert {r["state"] for r in rows} == {"delivered"}
    assert 'guardcal_hook_deliveries_total{hook="webhook",outcome="success"} 6.0' in metrics
    assert 'guardcal_hook_deliveries_total{hook="webhook",outcome="failure"} 5.0' in metrics
    first = receiver.accepted[0]
    assert first["label"] == "unsafe" and first["input"].startswith("case") and first["p_unsafe_raw"] == 0.6
    assert first["thresholds"]["safe"] == 0.9 and first["model"]["model_id"] == "fake"


async def test_pending_escalations_are_delivered_after_a_restart(kit, receiver, webhook_settings):
    receiver.reset(fail_first=10**9)  # down until recover()
    settings = webhook_settings(webhook_retries=1)  # in-call retries, then the outbox
    first_app = create_app(settings, kit.backend(kit.table_handler(default=0.6)))
    async with kit.running(first_app) as client:
        before = await classify_all(client, [f"before {i}" for i in range(4)])
        await kit.wait_for(lambda: receiver.attempts >= 4)
    # the first server is gone; its escalations wait in the outbox file
    assert receiver.ids() == []
    receiver.recover()
    second_app = create_app(settings, kit.backend(kit.table_handler(default=0.6)))
    async with kit.running(second_app) as client:
        after = await classify_all(client, ["after 0"])
        await kit.wait_for(lambda: len(receiver.ids()) >= 5)
        await asyncio.sleep(0.2)
        rows = await second_app.state.service.outbox.rows()
    ids = receiver.ids()
    assert sorted(ids) == sorted(before + after) and len(set(ids)) == 5
    assert receiver.bad_signatures == 0
    assert len(rows) == 5 and {r["state"] for r in rows} == {"delivered"}
