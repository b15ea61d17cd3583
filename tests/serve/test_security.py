"""Security: API keys off loopback, constant-time key checks, keys never logged, JSON bundles and
safetensors adapters only, a bundle for another model/prompt refused, optional input redaction.

(No score in any public response, error or header: test_no_leak.py.)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardcal.assets import DEFAULT_BUNDLE
from guardcal.errors import ConfigError
from guardcal.serve import create_app
from guardcal.serve.deps import KeyRing
from guardcal.serve.errors import StartupError
from guardcal.serve.service import WARM_UP_TEXT
from guardcal.serve.settings import ServeSettings

pytestmark = pytest.mark.anyio

#: where the default model is materialised (read before the serve tests point GUARDCAL_HOME elsewhere)
REAL_HOME = os.environ.get("GUARDCAL_HOME") or str(Path.home() / ".cache" / "guardcal")
#: pickle protocol 4 of {"a": 1}, written as bytes: guardcal must refuse it without unpickling
PICKLE_BYTES = b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


def _cli(*args: str, timeout: float = 120, home: str | None = None) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDCAL_")}
    env.update({"HF_HUB_OFFLINE": "1", "GUARDCAL_HOME": home or os.environ["GUARDCAL_HOME"]})
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "guardcal.cli", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - t0


# --- API keys ------------------------------------------------------------------------------


async def test_with_keys_every_caller_needs_one_and_remote_callers_get_in_with_it(kit, make_settings):
    app = create_app(make_settings(host="0.0.0.0", api_keys=kit.KEYS), kit.backend())
    body = {"input": "hello there"}
    async with app.router.lifespan_context(app):
        for host in ("203.0.113.7", "2001:db8::1", "127.0.0.1"):
            async with kit.client_for(app, host) as client:
                assert (await client.post("/classify", json=body)).status_code == 401
                ok = await client.post("/classify", json=body, headers=kit.bearer(kit.CLASSIFY_KEY))
                assert ok.status_code == 200 and "confidence" not in ok.json()
                assert (await client.get("/metrics", headers=kit.bearer(kit.CLASSIFY_KEY))).status_code == 403
                assert (await client.get("/metrics", headers=kit.bearer(kit.INTERNAL_KEY))).status_code == 200
                assert (await client.get("/healthz")).status_code == 200  # probes need no key


def test_a_public_bind_without_keys_is_refused_before_anything_loads(tmp_path):
    rc, out, took = _cli("--host", "0.0.0.0", "--outbox", str(tmp_path / "o.db"))
    assert rc == 2 and "no API keys are set" in out and "GUARDCAL_API_KEYS" in out
    assert "Traceback" not in out and took < 60


def test_key_lookup_compares_every_key_in_constant_time(monkeypatch):
    import guardcal.serve.deps as deps

    keys = {f"key-{i}-0123456789abcdef": "classify" for i in range(3)}
    keys["internal-0123456789abcdef"] = "internal"
    ring = KeyRing(keys)
    calls: list[tuple[int, int]] = []
    real = deps.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", counting)
    for presented, scope in [
        ("key-0-0123456789abcdef", "classify"),  # first key
        ("internal-0123456789abcdef", "internal"),  # last key
        ("key-0-0123456789abcdeX", None),  # near miss
        ("x", None),  # another length
    ]:
        calls.clear()
        assert ring.scope_for(presented) == scope
        assert calls == [(32, 32)] * 4  # every key, fixed-length digests: no early exit, no length leak
    source = inspect.getsource(KeyRing)
    assert "compare_digest" in source and "==" not in source and "presented in" not in source


async def test_keys_are_never_logged_or_echoed(kit, make_settings, caplog):
    caplog.set_level(logging.DEBUG)
    near_miss = kit.CLASSIFY_KEY[:-1] + "X"
    table = kit.table_handler(default=0.6)

    async def handler(texts):
        if "explode" in texts:
            raise RuntimeError("backend broke")
        return table(texts)

    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend(handler))
    responses = []
    async with kit.running(app) as client:
        for headers in (
            kit.bearer(kit.CLASSIFY_KEY),
            kit.bearer(kit.INTERNAL_KEY),
            kit.bearer(near_miss),
            {"Authorization": kit.CLASSIFY_KEY},  # no scheme
            {"Authorization": f"Basic {kit.CLASSIFY_KEY}"},
            {},
        ):
            for body in ({"input": "escalate me"}, {"inputs": ["explode", "hi"]}, {"input": 1}):
                responses.append(await client.post("/classify", json=body, headers=headers))
            responses.append(await client.get("/metrics", headers=headers))
        await kit.wait_for(lambda: app.state.service.metrics.registry.get_sample_value("guardcal_outbox_depth") == 0)
    assert {r.status_code for r in responses} >= {200, 401, 403, 422}
    secrets = (kit.CLASSIFY_KEY, kit.INTERNAL_KEY, near_miss)
    for r in responses:
        text = r.text + json.dumps(dict(r.headers))
        assert not any(s in text for s in secrets)
    records = caplog.records
    assert any(r.name == "guardcal.audit" for r in records) and any(r.name == "guardcal.serve.auth" for r in records)
    for record in records:
        rendered = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        assert not any(s in rendered for s in secrets), rendered


# --- artifacts: JSON bundles, safetensors adapters, fingerprints -------------------------------


async def test_a_pickled_bundle_is_refused_at_startup(kit, make_settings, tmp_path):
    path = tmp_path / "bundle.pkl"
    path.write_bytes(PICKLE_BYTES)
    backend = kit.backend()
    app = create_app(make_settings(bundle=str(path)), backend)
    with pytest.raises(StartupError, match="is not a JSON calibration bundle"):
        async with app.router.lifespan_context(app):
            pass
    assert not backend.ready and backend.calls == []


def test_serve_refuses_a_pickled_bundle_before_loading_the_model(tmp_path):
    path = tmp_path / "bundle.pkl"
    path.write_bytes(PICKLE_BYTES)
    rc, out, took = _cli("--bundle", str(path), "--outbox", str(tmp_path / "o.db"), "--port", "0")
    assert rc != 0 and "is not a JSON calibration bundle" in out and "Application startup failed" in out
    assert took < 60  # refused before the model was loaded


def test_serve_refuses_a_pickle_adapter_before_loading_anything(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(PICKLE_BYTES)
    rc, out, took = _cli("--adapter", str(adapter), "--outbox", str(tmp_path / "o.db"))
    assert rc == 2 and "adapter_model.bin" in out and "refuses to load" in out and "safe_serialization=True" in out
    assert "Traceback" not in out and took < 60
    with pytest.raises(ConfigError, match=r"adapter: .*no adapter_model\.safetensors"):
        ServeSettings.load(adapter=str(adapter), bundle="none", outbox=str(tmp_path / "o.db"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_fingerprint", "sha256:0000000000000000"),
        ("mode", "reasoning"),
        ("adapter_hash", "sha256:1111111111111111"),
        ("model_id", "Qwen/Qwen3-1.7B"),
        ("label_spec", {"labels": ["safe", "unsafe"], "surfaces": ["Safe", "Unsafe"], "token_ids": [[7], [8]]}),
    ],
)
async def test_a_bundle_for_another_setup_is_refused(kit, make_settings, make_bundle, field, value):
    backend = kit.backend()
    app = create_app(make_settings(bundle=str(make_bundle(**{field: value}))), backend)
    with pytest.raises(StartupError, match=f"bundle was fitted for {field}"):
        async with app.router.lifespan_context(app):
            pass
    assert not backend.ready and backend.calls == []


def test_the_real_model_refuses_a_bundle_fitted_for_another_prompt(tmp_path):
    from guardcal.models.default import default_model_dir

    default_model_dir(Path(REAL_HOME))  # materialised where the server will look (no-op when done)
    bundle = json.loads(DEFAULT_BUNDLE.read_text())
    bundle["prompt_fingerprint"] = "sha256:" + hashlib.sha256(b"another prompt").hexdigest()[:16]
    path = tmp_path / "other-prompt.json"
    path.write_text(json.dumps(bundle))
    rc, out, _ = _cli(
        "--bundle", str(path), "--outbox", str(tmp_path / "o.db"), "--port", "0", timeout=900, home=REAL_HOME
    )
    assert rc != 0 and "refusing to start" in out and "bundle was fitted for prompt_fingerprint" in out, out
    assert "Uvicorn running" not in out


# --- redaction ------------------------------------------------------------------------------

SECRET = "my card number is 4111-1111-1111-1111 SECRET-7f3a"


async def _escalate_secret(kit, make_settings, caplog, *, redact: bool) -> tuple[list[dict], str, bytes]:
    caplog.set_level(logging.DEBUG)
    table = kit.table_handler(default=0.6)  # unknown texts escalate

    async def handler(texts):
        if texts != [WARM_UP_TEXT] and any("explode" in t for t in texts):
            raise ValueError(f"tokenizer choked on {texts!r}")  # exception text quotes the input
        return table(texts)

    hook = kit.RecordingHook()
    settings = make_settings(redact_input=redact)
    app = create_app(settings, kit.backend(handler), hooks=[hook])
    async with kit.running(app) as client:
        assert (await client.post("/classify", json={"input": SECRET})).json()["action"] == "escalate"
        failed = await client.post("/classify", json={"inputs": [SECRET + " explode", "hello there"]})
        assert [v["action"] for v in failed.json()["results"]] == ["escalate", "escalate"]  # failed closed
        await kit.wait_for(lambda: len(hook.payloads) == 3)
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    stored = b"".join(p.read_bytes() for p in settings.outbox.parent.glob(settings.outbox.name + "*"))
    return hook.payloads, logs, stored


async def test_redaction_keeps_the_input_out_of_payloads_logs_and_the_outbox(kit, make_settings, caplog):
    payloads, logs, stored = await _escalate_secret(kit, make_settings, caplog, redact=True)
    assert all("input" not in p and len(p["input_sha256"]) == 64 for p in payloads)
    assert payloads[0]["input_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert "SECRET-7f3a" not in json.dumps(payloads) and "SECRET-7f3a" not in logs
    assert b"SECRET-7f3a" not in stored and "backend failure ValueError" in logs


async def test_without_redaction_hooks_and_the_debug_log_get_the_input(kit, make_settings, caplog):
    payloads, logs, stored = await _escalate_secret(kit, make_settings, caplog, redact=False)
    assert sorted(p["input"] for p in payloads)[0].startswith("hello") and SECRET in json.dumps(payloads)
    assert "SECRET-7f3a" in logs and b"SECRET-7f3a" in stored  # so the redacted test can fail
