"""Escalation hooks: payload, Standard Webhooks signing, webhook retries (MockTransport), LogHook, discovery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from importlib.metadata import EntryPoint

import httpx
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from guardcal.serve.errors import HookDeliveryError, StartupError
from guardcal.serve.hooks import (
    EscalationHook,
    LogHook,
    WebhookHook,
    canonical_json,
    escalation_payload,
    load_hooks,
)
from guardcal.serve.policy import decide, fail_closed
from guardcal.serve.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    new_secret,
    parse_secret,
    signed_headers,
)

pytestmark = pytest.mark.anyio
PAYLOAD = {"id": "abc", "label": "unsafe", "confidence": 0.61, "input": "héllo"}
SECRET = "whsec_" + base64.b64encode(b"guardcal-test-key-32-bytes-long!").decode()


def test_signature_follows_standard_webhooks_and_the_package_verifies_it():
    body = canonical_json(PAYLOAD)
    assert body == json.dumps(PAYLOAD, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    key = parse_secret(SECRET)
    assert key == b"guardcal-test-key-32-bytes-long!"
    when = datetime(2026, 12, 1, 5, 10, 27, tzinfo=UTC)
    headers = signed_headers("abc", body, key, now=when)
    assert headers[ID_HEADER] == "abc" and headers[TIMESTAMP_HEADER] == str(int(when.timestamp()))
    # the documented scheme: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> under the decoded key
    mac = hmac.new(key, f"abc.{headers[TIMESTAMP_HEADER]}.".encode() + body, hashlib.sha256).digest()
    assert headers[SIGNATURE_HEADER] == "v1," + base64.b64encode(mac).decode()
    assert headers[SIGNATURE_HEADER] == Webhook(SECRET).sign("abc", when, body)  # the reference package agrees
    fresh = signed_headers("abc", body, key)
    assert Webhook(SECRET).verify(body, fresh) == PAYLOAD  # and accepts it (within its 5-minute window)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, fresh)
    with pytest.raises(WebhookVerificationError):  # an old timestamp is a replay
        Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize(
    "secret", ["Zq7xQ", "s3cret-that-is-long-enough-but-not-whsec", "whsec_not*base64!", "whsec_" + "QUJD"]
)
def test_secrets_outside_the_standard_format_are_refused_without_being_echoed(make_settings, secret):
    with pytest.raises(ValueError, match="whsec_") as err:
        parse_secret(secret)
    assert secret not in str(err.value)
    with pytest.raises(ValidationError, match="whsec_") as err:
        make_settings(webhook_url="http://127.0.0.1:9/hook", webhook_secret=secret)
    assert secret not in str(err.value)
    assert len(parse_secret(new_secret())) == 32


def test_plain_http_webhooks_only_to_loopback_or_when_allowed(make_settings):
    for url in (
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "https://review.example/h",
    ):
        assert make_settings(webhook_url=url).webhook_url == url
    with pytest.raises(ValidationError, match="plain http to 'review.example'.*ALLOW_INSECURE_WEBHOOK"):
        make_settings(webhook_url="http://review.example/hook")
    allowed = make_settings(webhook_url="http://review.example/hook", allow_insecure_webhook=True)
    assert allowed.webhook_url == "http://review.example/hook"


def test_hook_timeout_must_cover_a_webhook_delivery(make_settings):
    with pytest.raises(ValidationError, match="raise hook_timeout_s"):
        make_settings(webhook_url="http://127.0.0.1:9/", webhook_timeout_s=10, webhook_retries=3, hook_timeout_s=30)
    assert make_settings(webhook_url="http://127.0.0.1:9/", webhook_timeout_s=10, webhook_retries=3,
                         hook_timeout_s=60).hook_timeout_s == 60  # fmt: skip


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


def _mock_webhook(statuses: list[int | Exception], secret: str | None = SECRET, retries: int = 3):
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
    for request in seen:  # every attempt signed (afresh), with the escalation id as webhook-id
        assert Webhook(SECRET).verify(request.content, dict(request.headers)) == PAYLOAD
        assert request.headers[ID_HEADER] == "abc"
        assert "x-guardcal-signature" not in request.headers
    assert seen[-1].headers["content-type"] == "application/json"


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
    assert SIGNATURE_HEADER not in seen[0].headers and seen[0].headers[ID_HEADER] == "abc"


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
    named = make_settings(webhook_url="http://127.0.0.1:9/", hooks="webhook")
    assert [h.name for h in load_hooks(named, plugins=[])] == ["webhook"]
    assert load_hooks(make_settings(hooks=""), plugins=[]) == []
    with pytest.raises(StartupError, match="GUARDCAL_WEBHOOK_URL"):
        load_hooks(make_settings(hooks="webhook"), plugins=[])
    with pytest.raises(StartupError, match="available hooks"):
        load_hooks(make_settings(hooks="pager"), plugins=[])


PLUGIN = """
CALLS = []

class Pager:
    name = "pager"
    def __init__(self, settings):
        self.settings = settings
    async def deliver(self, payload):
        pass

def make(settings):
    CALLS.append("make")
    return Pager(settings)

def broken(settings):
    raise RuntimeError("no token")

def not_a_hook(settings):
    return object()
"""


def test_entry_point_plugins_load_only_when_named(make_settings, tmp_path, monkeypatch, caplog):
    (tmp_path / "guardcal_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import guardcal_test_plugin

    def ep(name: str, attr: str) -> EntryPoint:
        return EntryPoint(name=name, value=f"guardcal_test_plugin:{attr}", group="guardcal.hooks")

    # installed but not named: never built (it would get every raw input), only mentioned at INFO
    caplog.set_level(logging.INFO, logger="guardcal.serve.hooks")
    unasked = [ep("pager", "make"), EntryPoint(name="spy", value="no_such_module:f", group="guardcal.hooks")]
    assert [h.name for h in load_hooks(make_settings(), plugins=unasked)] == ["log"]
    assert guardcal_test_plugin.CALLS == []
    assert "not enabled" in caplog.text and "pager" in caplog.text and "spy" in caplog.text
    hooks = load_hooks(make_settings(hooks="log,pager"), plugins=unasked)
    assert [h.name for h in hooks] == ["log", "pager"] and isinstance(hooks[1], EscalationHook)
    assert guardcal_test_plugin.CALLS == ["make"]
    assert [h.name for h in load_hooks(make_settings(hooks="pager"), plugins=[ep("pager", "make")])] == ["pager"]
    with pytest.raises(StartupError, match="failed to load: RuntimeError: no token"):
        load_hooks(make_settings(hooks="pager"), plugins=[ep("pager", "broken")])
    with pytest.raises(StartupError, match="not a name"):
        load_hooks(make_settings(hooks="pager"), plugins=[ep("pager", "not_a_hook")])
    with pytest.raises(StartupError, match="unique"):
        load_hooks(make_settings(hooks="pager,pager2"), plugins=[ep("pager", "make"), ep("pager2", "make")])
