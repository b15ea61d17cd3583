"""Fuzzing: schemathesis against the server's own OpenAPI schema, over real HTTP on 127.0.0.1.

The app (``create_app`` over a FakeBackend, ``dev`` on so it serves ``/openapi.json``) runs
under a real uvicorn in a thread. Every generated request, valid or not, must get a documented
status code, no 5xx, and a body and headers that conform to the schema; the number of examples
is bounded and derandomized so CI time and results are stable.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.config import SchemathesisConfig

from guardcal.core.confidence import Scores
from guardcal.serve import FakeBackend, ServeSettings, create_app

CLASSIFY_KEY = "fuzz-classify-key-0123456789"
INTERNAL_KEY = "fuzz-internal-key-0123456789"
REVIEW_KEY = "fuzz-review-key-0123456789"
MAX_EXAMPLES = 60


def _handler(texts: list) -> Scores:
    # deterministic and spread over allow / block / escalate (a conversation by its judged turn's text)
    p = np.array([(sum(map(ord, getattr(t, "text", t))) % 100) / 100 for t in texts], dtype=np.float64)
    return Scores(p_safe=1.0 - p, p_unsafe=p)


def _app(outbox: Path):  # type: ignore[no-untyped-def]
    settings = ServeSettings(
        bundle=None,
        escalate_below=0.9,
        outbox=outbox,
        api_keys=f"{CLASSIFY_KEY}:classify,{INTERNAL_KEY}:internal,{REVIEW_KEY}:review@fuzz",
        reviews=True,
        max_input_chars=2000,
        max_request_batch=8,
        dev=True,
    )
    return create_app(settings, FakeBackend(_handler))


#: the schema the server publishes (create_app builds it; the live server must serve the same)
OPENAPI = _app(Path(tempfile.gettempdir()) / "guardcal-fuzz-schema-only.sqlite3").openapi()
#: a request the schema forbids must be refused with one of these (413: over a size limit); never 5xx
REJECTIONS = ["400", "401", "403", "413", "422", "429"]
#: a request the schema allows: 413 only for a conversation whose turns *together* exceed max_input_chars (each
#: turn's maxLength is documented; their sum cannot be stated in JSON schema)
ACCEPTED = ["200", "401", "403", "404", "409", "413", "429"]
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": REJECTIONS},
            "positive_data_acceptance": {"expected-statuses": ACCEPTED},
        }
    }
)
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)
FUZZ_SETTINGS = hypothesis_settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = _app(tmp_path_factory.mktemp("fuzz") / "outbox.sqlite3")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "fuzz server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_live_server_publishes_the_fuzzed_schema(live_server: str) -> None:
    served = httpx.get(live_server + "/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == OPENAPI
    assert set(OPENAPI["paths"]) == {
        "/classify", "/healthz", "/readyz", "/reviews", "/reviews/queue", "/reviews/audit", "/admin/reload-bundle"
    }  # fmt: skip


@pytest.mark.timeout(300)
@schema.parametrize()
@FUZZ_SETTINGS
def test_internal_scope_conforms_to_the_schema(case, live_server):  # type: ignore[no-untyped-def]
    case.call_and_validate(base_url=live_server, headers={"Authorization": f"Bearer {INTERNAL_KEY}"}, timeout=30)


@pytest.mark.timeout(300)
@schema.parametrize()
@FUZZ_SETTINGS
def test_classify_scope_conforms_and_never_sees_a_score(case, live_server):  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {CLASSIFY_KEY}"}
    response = case.call_and_validate(base_url=live_server, headers=auth, timeout=30)
    assert "confidence" not in response.text


@pytest.mark.timeout(300)
@schema.parametrize()
@FUZZ_SETTINGS
def test_review_scope_conforms_and_never_sees_a_score(case, live_server):  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {REVIEW_KEY}"}
    response = case.call_and_validate(base_url=live_server, headers=auth, timeout=30)
    assert "p_unsafe" not in response.text and "raw" not in response.text
