"""Escalation hooks: payload, signing, webhook retries (MockTransport), LogHook, discovery."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from importlib.metadata import EntryPoint

import httpx
import pytest

from guardcal.serve.errors import HookDeliveryError, StartupError
from guardcal.serve.hooks import (
    SIGNATURE_HEADER,
    EscalationHook,
    LogHook,
    WebhookHook,
    canonical_json,
    escalation_payload,
    load_hooks,
    sign,
)
from guardcal.serve.policy import decide, fail_closed

pytestmark = pytest.mark.anyio
PAYLOAD = {"id": "abc", "label": "unsafe", "confidence": 0.61, "input": "héllo"}


def test_signature_is_hmac_sha256_of_the_exact_body():
    body = canonical_json(PAYLOAD)
    assert body == json.dumps(PAYLOAD, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign(body, "k") == f"sha256={expected}"


def test_payload_fields_and_redaction():
    from guardcal.calibrate.thresholds import fixed_thresholds

    d = decide(0.35, fixed_thresholds(0.9))
    ctx = {"request_id": "r", "metadata": {}, "mode": "enforce", "model_version": "m-1", "policy_version": "p-1"}
    p = escalation_payload("v1", d, text="some text", p_unsafe_raw=0.3, context=ctx, redact=False)
    assert (p["id"], p["label"], p["action"], p["reason"], p["input"]) == (
        "v1",
        "safe",
        "escalate",
        "low_confidence",
        "some text",
    )
    assert p["confidence"] == pytest.approx(0.65) and p["raw_confidence"] == pytest.approx(0.7)
    assert p["p_unsafe_raw"] == 0.3 and p["timestamp"].endswith("+00:00")
    red = escalation_payload(
        "v1", fail_closed("timeout"), text="some text", p_unsafe_raw=None, context=ctx, redact=True
    )
    assert "input" not in red and red["input_sha256"] == hashlib.sha256(b"some text").hexdigest()
    assert red["confidence"] is None and red["reason"] == "timeout"


def _mock_webhook(statuses: list[int | Exception], secret: str | None = "s3cret", retries: int = 3):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        outcome = statuses[min(len(seen) - 1, len(statuses) - 1)]
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    hook = WebhookHook("http://receiver.test/hook", secret=secret, retries=retries, backoff_s=0.001, client=client)
    return hook, seen


async def test_webhook_retries_5xx_and_transport_errors_then_succeeds():
    hook, seen = _mock_webhook([500, httpx.ConnectError("refused"), 503, 200])
    await hook.deliver(PAYLOAD)
    assert len(seen) == 4
    bodies = {r.content for r in seen}
    assert bodies == {canonical_json(PAYLOAD)}  # the same bytes every time
    last = seen[-1]
    assert last.headers[SIGNATURE_HEADER] == sign(last.content, "s3cret")
    assert last.headers["content-type"] == "application/json"
    assert last.headers["x-guardcal-escalation-id"] == "abc"


async def test_webhook_gives_up_after_retries_and_on_4xx():
    hook, seen = _mock_webhook([500], retries=2)
    with pytest.raises(HookDeliveryError, match="HTTP 500"):
        await hook.deliver(PAYLOAD)
    assert len(seen) == 3
    hook, seen = _mock_webhook([400, 200])
    with pytest.raises(HookDeliveryError, match="HTTP 400"):
        await hook.deliver(PAYLOAD)
    assert len(seen) == 1
    hook, seen = _mock_webhook([429, 200])
    await hook.deliver(PAYLOAD)
    assert len(seen) == 2


async def test_webhook_without_secret_sends_no_signature():
    hook, seen = _mock_webhook([200], secret=None)
    await hook.deliver(PAYLOAD)
    assert SIGNATURE_HEADER.lower() not in seen[0].headers


async def test_log_hook_keeps_scores_out_of_info(caplog):
    caplog.set_level(logging.DEBUG)
    await LogHook().deliver({**PAYLOAD, "request_id": "r-1", "reason": "low_confidence"})
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r for r in caplog.records if r.name == "guardcal.audit"]
    assert len(info) == 1 and "0.61" not in info[0].getMessage() and "abc" in info[0].getMessage()
    assert debug and debug[0].levelno == logging.DEBUG and "0.61" in debug[0].getMessage()


def test_builtin_hooks_by_default_and_by_name(make_settings):
    assert [h.name for h in load_hooks(make_settings(), plugins=[])] == ["log"]
    with_url = make_settings(webhook_url="http://127.0.0.1:9/hook")
    assert [h.name for h in load_hooks(with_url, plugins=[])] == ["log", "webhook"]
    assert [h.name for h in load_hooks(make_settings(webhook_url="http://x/", hooks="webhook"), plugins=[])] == [
        "webhook"
    ]
    assert load_hooks(make_settings(hooks=""), plugins=[]) == []
    with pytest.raises(StartupError, match="GUARDCAL_WEBHOOK_URL"):
        load_hooks(make_settings(hooks="webhook"), plugins=[])
    with pytest.raises(StartupError, match="available hooks"):
        load_hooks(make_settings(hooks="pager"), plugins=[])


PLUGIN = """
class Pager:
    name = "pager"
    def __init__(self, settings):
        self.settings = settings
    async def deliver(self, payload):
        pass

def make(settings):
    return Pager(settings)

def broken(settings):
    raise RuntimeError("no token")

def not_a_hook(settings):
    return object()
"""


def test_entry_point_plugins(make_settings, tmp_path, monkeypatch):
    (tmp_path / "guardcal_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))

    def ep(name: str, attr: str) -> EntryPoint:
        return EntryPoint(name=name, value=f"guardcal_test_plugin:{attr}", group="guardcal.hooks")

    hooks = load_hooks(make_settings(), plugins=[ep("pager", "make")])
    assert [h.name for h in hooks] == ["log", "pager"] and isinstance(hooks[1], EscalationHook)
    assert [h.name for h in load_hooks(make_settings(hooks="pager"), plugins=[ep("pager", "make")])] == ["pager"]
    with pytest.raises(StartupError, match="failed to load: RuntimeError: no token"):
        load_hooks(make_settings(), plugins=[ep("pager", "broken")])
    with pytest.raises(StartupError, match="not a name"):
        load_hooks(make_settings(), plugins=[ep("pager", "not_a_hook")])
    with pytest.raises(StartupError, match="unique"):
        load_hooks(make_settings(), plugins=[ep("pager", "make"), ep("pager2", "make")])
