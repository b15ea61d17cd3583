"""Long inputs through the service and HTTP (FakeBackend): decided on the highest *calibrated* window,
every window reported in the escalation payload and the audit record, 413 past the window cap.

The fake model reads ``"a|b|c"`` as three windows ``a``, ``b``, ``c`` (what ``core.windows`` does
with tokens), each with its raw P(unsafe) from the table, and returns ``WindowedScores``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from guardcal.core.confidence import Scores
from guardcal.core.windows import WindowedScores, WindowPolicy
from guardcal.errors import InputTooLongError
from guardcal.serve.app import create_app
from guardcal.serve.hooks import SCORED_KEYS

pytestmark = pytest.mark.anyio
TABLE = {"hello there": 0.02, "how do I bake bread": 0.08, "I will hurt you": 0.97, "borderline joke": 0.62}
CAP = 4


def windowed(texts: list[str], table=TABLE, undecided: str | None = None) -> WindowedScores:
    parts = [t.split("|") for t in texts]
    for i, part in enumerate(parts):
        if len(part) > CAP:
            raise WindowPolicy(8, 2, max_windows=CAP).refuse(8 * len(part), index=i)
    p = np.array([table.get(w, 0.1) for part in parts for w in part])
    mass = np.array([0.0 if w == undecided else 1.0 for part in parts for w in part])
    every = Scores((1 - p) * mass, p * mass)
    return WindowedScores.from_windows(every, [len(x) for x in parts], [8 * len(x) for x in parts])


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _post(kit, app, body, hook=None, expect=1):
    async with kit.running(app) as client:
        r = await client.post("/classify", json=body, headers=kit.bearer(kit.INTERNAL_KEY))
        if hook is not None and r.status_code == 200:
            await kit.wait_for(lambda: len(hook.payloads) >= expect)
        metrics = (await client.get("/metrics", headers=kit.bearer(kit.INTERNAL_KEY))).text
    return r, metrics


async def test_any_window_over_the_threshold_decides_and_every_window_is_in_the_payload(kit, make_settings):
    hook = kit.RecordingHook()
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend(windowed), hooks=[hook])
    text = "hello there|how do I bake bread|I will hurt you|hello there"
    body = {"inputs": [text, "hello there", "borderline joke|hello there"]}
    r, _ = await _post(kit, app, body, hook)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    # the harmful third window blocks the whole input; each input is decided on its own windows
    decided = [(v["label"], v["action"]) for v in results]
    assert decided == [("unsafe", "block"), ("safe", "allow"), ("unsafe", "escalate")]
    assert [v["confidence"] for v in results] == [0.97, 0.98, 0.62]
    (payload,) = hook.payloads  # the escalated one
    assert payload["id"] == results[2]["id"] and payload["input"] == "borderline joke|hello there"
    assert (payload["windows"], payload["input_tokens"], payload["decisive_window"]) == (2, 16, 0)
    assert payload["window_p_unsafe_raw"] == [0.62, 0.02]  # every window scored, in order
    assert payload["p_unsafe_raw"] == 0.62 == pytest.approx(payload["p_unsafe"])


async def test_the_highest_calibrated_window_decides_not_the_highest_raw(kit, make_settings, make_bundle):
    """A calibrator is monotone but may be decreasing (a Platt slope below 0): the decision takes the
    maximum after calibration, so the window the calibrator rates most unsafe decides."""
    hook = kit.RecordingHook()
    bundle = make_bundle(a=-1.0, threshold=0.99)  # calibrated p = 1 - raw p
    settings = make_settings(api_keys=kit.KEYS, bundle=str(bundle), escalate_below=None)
    app = create_app(settings, kit.backend(windowed), hooks=[hook])
    r, _ = await _post(kit, app, {"input": "borderline joke|hello there"}, hook)
    assert r.status_code == 200, r.text
    assert (r.json()["label"], r.json()["action"]) == ("unsafe", "escalate")  # 1 - 0.02 = 0.98 > 1 - 0.62
    (payload,) = hook.payloads
    assert payload["decisive_window"] == 1 and payload["p_unsafe_raw"] == 0.02
    assert payload["p_unsafe"] == pytest.approx(0.98) and payload["confidence"] == pytest.approx(0.98)


async def test_a_window_without_a_decision_token_fails_the_input_closed(kit, make_settings):
    hook = kit.RecordingHook()
    app = create_app(
        make_settings(api_keys=kit.KEYS),
        kit.backend(lambda texts: windowed(texts, undecided="garbled")),
        hooks=[hook],
    )
    r, _ = await _post(kit, app, {"input": "hello there|garbled|hello there"}, hook)
    assert (r.json()["label"], r.json()["action"]) == ("unsafe", "escalate")
    (payload,) = hook.payloads
    assert payload["reason"] == "undecided" and payload["windows"] == 3 and payload["decisive_window"] == 1


async def test_past_the_window_cap_the_request_is_refused_with_413_and_nothing_is_decided(kit, make_settings):
    hook = kit.RecordingHook()
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend(windowed), hooks=[hook])
    too_long = "|".join(["hello there"] * (CAP + 1))
    r, metrics = await _post(kit, app, {"inputs": ["hello there", too_long]})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["type"] == "payload_too_large" and error["code"] == 413
    assert error["message"].startswith("input 1 is 40 tokens long") and "limit is 4 windows" in error["message"]
    assert "--max-windows" in error["message"] and "hello there" not in error["message"]
    assert _sample(metrics, "guardcal_rejected_requests_total", code="413") == 1
    assert _sample(metrics, "guardcal_backend_errors_total") == 0  # a refusal, not a backend failure
    assert _sample(metrics, "guardcal_requests_total") == 0  # no verdict was given
    assert hook.payloads == []


async def test_the_audit_record_says_what_was_scored(kit, make_settings, caplog):
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend(windowed), hooks=[])
    with caplog.at_level(logging.DEBUG, logger="guardcal.audit"):
        r, _ = await _post(kit, app, {"input": "hello there|I will hurt you|hello there"})
    assert r.status_code == 200
    (line,) = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("verdict ")]
    assert "input_tokens=24 windows=3 decisive_window=1" in line


async def test_a_backend_that_does_not_window_leaves_the_fields_empty(kit, make_settings):
    hook = kit.RecordingHook()
    app = create_app(make_settings(api_keys=kit.KEYS), kit.backend(), hooks=[hook])
    r, _ = await _post(kit, app, {"input": "borderline joke"}, hook)
    assert r.status_code == 200
    (payload,) = hook.payloads
    assert all(payload[key] is None for key in SCORED_KEYS)


def test_serve_settings_carry_the_window_policy_to_the_backend(make_settings, monkeypatch):
    from guardcal.cli import build_backend

    settings = make_settings(max_input_tokens=256, max_windows=3)
    backend = build_backend(settings)
    assert (backend.max_input_tokens, backend.max_windows) == (256, 3)
    defaults = build_backend(make_settings())
    assert (defaults.max_input_tokens, defaults.max_windows) == (1024, 8)


def test_serve_takes_the_window_budget_the_bundle_was_fitted_with(make_settings, make_bundle, tmp_path):
    import json

    path = make_bundle()
    data = json.loads(path.read_text())
    data["extra"] = {"max_input_tokens": 512}
    path.write_text(json.dumps(data))
    assert make_settings(bundle=str(path)).max_input_tokens == 512
    assert make_settings(bundle=str(path), max_input_tokens=2048).max_input_tokens == 2048  # explicit wins
    assert make_settings().max_input_tokens == 1024


def test_input_too_long_error_is_not_a_backend_error():
    from guardcal.errors import BackendError

    err = WindowPolicy(8, max_windows=1).refuse(20)
    assert isinstance(err, InputTooLongError) and not isinstance(err, BackendError)
