"""Authentication before the body is read, the ``metrics`` scope and uvicorn's ``limit_concurrency``
(issue 20, item 10).

In process: the app is wrapped so the test sees every ``receive()`` call; a refused request must be
answered without one. Then a real server process (the real app under uvicorn, fake backend): a
caller without a key who sends only the headers of a large body gets 401 at once, where before the
server waited for (and would have read and decoded) the body; and past ``limit_concurrency``
uvicorn answers 503 before parsing anything.
"""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from benchmarks import load_faults as lf  # benchmarks/ is importable: pytest's pythonpath has the repo root
from guardcal.serve import create_app
from guardcal.serve.settings import parse_api_keys

METRICS_KEY = "metrics-key-0123456789abcdef"


class ReceiveCounter:
    """ASGI wrapper counting the request-body messages the app asked for."""

    def __init__(self, app):
        self.app, self.calls = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            self.calls += 1
            return await receive()

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


@pytest.mark.anyio
async def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(kit, make_settings):
    keys = f"{kit.KEYS},{METRICS_KEY}:metrics"
    app = create_app(make_settings(api_keys=keys, host="0.0.0.0"), kit.backend())
    counter = ReceiveCounter(app)
    body = {"inputs": ["hello there"] * 32}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=counter, client=("203.0.113.7", 40000)), base_url="http://t"
        ) as client:
            for headers, status in [
                ({}, 401),
                (kit.bearer("not-a-key-0123456789abcdef"), 401),
                ({"Authorization": f"Basic {kit.CLASSIFY_KEY}"}, 401),
                (kit.bearer(METRICS_KEY), 403),  # a Prometheus key cannot classify
            ]:
                counter.calls = 0
                r = await client.post("/classify", json=body, headers=headers)
                assert r.status_code == status and r.json()["error"]["code"] == status, (headers, r.text)
                assert counter.calls == 0, f"{headers}: the body was read before the caller was refused"
            counter.calls = 0
            ok = await client.post("/classify", json=body, headers=kit.bearer(kit.CLASSIFY_KEY))
            assert ok.status_code == 200 and counter.calls >= 1  # the positive control does read it
            refused = app.state.service.metrics.registry.get_sample_value(
                "guardcal_rejected_requests_total", {"code": "401"}
            )
            assert refused == 3


@pytest.mark.anyio
async def test_the_metrics_scope_reads_metrics_only_and_confidence_stays_internal(kit, make_settings):
    keys = f"{kit.KEYS},{METRICS_KEY}:metrics"
    app = create_app(make_settings(api_keys=keys), kit.backend())
    async with kit.running(app) as client:

        async def status(method, path, key):
            kwargs = {"json": {"input": "borderline joke"}} if method == "POST" else {}
            r = await client.request(method, path, headers=kit.bearer(key), **kwargs)
            return r.status_code, r

        assert (await status("GET", "/metrics", METRICS_KEY))[0] == 200
        code, r = await status("POST", "/classify", METRICS_KEY)
        assert code == 403 and "'classify' or 'internal'" in r.json()["error"]["message"]
        assert (await status("GET", "/metrics", kit.CLASSIFY_KEY))[0] == 403
        assert (await status("GET", "/metrics", kit.INTERNAL_KEY))[0] == 200  # internal keeps /metrics
        code, r = await status("POST", "/classify", kit.INTERNAL_KEY)
        assert code == 200 and r.json()["confidence"] == 0.62
        code, r = await status("POST", "/classify", kit.CLASSIFY_KEY)
        assert code == 200 and "confidence" not in r.json()
        assert (await client.get("/readyz")).status_code == 200  # probes need no key
    assert parse_api_keys(f"{METRICS_KEY}:metrics") == {METRICS_KEY: "metrics"}


def test_serve_hands_limit_concurrency_to_uvicorn(monkeypatch, make_settings, kit):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: seen.update(config=self.config))
    from guardcal.serve.app import serve

    serve(make_settings(limit_concurrency=77, queue_size=8), kit.backend())
    assert seen["config"].limit_concurrency == 77


# --- a real server process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    settings = {
        "outbox": workdir / "outbox.sqlite3",
        "api_keys": lf.KEYS,
        "queue_size": 2,
        "limit_concurrency": 4,
        "max_input_chars": 20_000,
    }
    with lf.running_server("fake", workdir, settings, ready_timeout_s=120) as proc:
        yield proc


def _headers_only(port: int, key: str | None, content_length: int) -> bytes:
    """Send the request line and headers of a ``content_length`` body, no body; return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        sock.sendall(
            (
                "POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"{auth}Content-Length: {content_length}\r\n\r\n"
            ).encode()
        )
        sock.sendall(b'{"input": "' + b"a" * 1000)  # a start of the body, the rest never comes
        answer = b""
        try:
            while b"}}" not in answer:  # the whole error body (it may come in a second packet)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
        return answer


@pytest.mark.timeout(120)
def test_a_real_server_answers_401_without_waiting_for_the_body(server):
    t0 = time.perf_counter()
    answer = _headers_only(server.port, None, 2_000_000)
    took = time.perf_counter() - t0
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"unauthorized"' in answer and took < 4, took
    # with a valid key the server does wait for the body (the timeout above is not vacuous)
    assert _headers_only(server.port, lf.CLASSIFY_KEY, 2_000_000) == b""


@pytest.mark.timeout(120)
def test_past_limit_concurrency_uvicorn_answers_503_before_parsing(server):
    auth = {"Authorization": f"Bearer {lf.CLASSIFY_KEY}"}
    body = {"input": "safe hello"}
    assert httpx.post(server.base_url + "/classify", json=body, headers=auth, timeout=10).status_code == 200
    with contextlib.ExitStack() as stack:
        for _ in range(4):  # idle connections count against the limit
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.3)
        over = httpx.post(server.base_url + "/classify", json=body, headers=auth, timeout=10)
        assert over.status_code == 503, over.text
    time.sleep(0.3)
    assert httpx.post(server.base_url + "/classify", json=body, headers=auth, timeout=10).status_code == 200
