"""Issue 22, item 5: swapping a calibration bundle into a running server (admin endpoint and SIGHUP).

A bundle that does not fit the running model (the start-up check) is refused and the old one stays;
a request in flight finishes on the policy it began with.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal

import anyio
import pytest

from guardcal.backends.base import fake_identity
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import fixed_thresholds
from guardcal.serve import create_app

pytestmark = pytest.mark.anyio

INTERNAL = "internal-key-0123456789abcdef"
CLASSIFY = "classify-key-0123456789abcdef"
KEYS = f"{INTERNAL}:internal,{CLASSIFY}:classify"


def _write(path, *, a=1.0, threshold=0.9, **identity):
    bundle = CalibrationBundle(
        method="platt",
        params={"prior_smoothing": True, "a_": a, "b_": 0.0},
        thresholds=fixed_thresholds(threshold).to_dict(),
        **{**fake_identity(), **identity},
    )
    bundle.save(path)


async def _classify(kit, client, text="borderline joke"):
    r = await client.post("/classify", json={"input": text}, headers=kit.bearer(INTERNAL))
    assert r.status_code == 200, r.text
    return r.json()


async def _reload(kit, client, key=INTERNAL):
    return await client.post("/admin/reload-bundle", headers=kit.bearer(key))


async def test_a_fitting_bundle_is_swapped_in_and_others_are_refused(kit, make_settings, tmp_path):
    path = tmp_path / "served.json"
    _write(path, a=1.0, threshold=0.9)
    settings = make_settings(api_keys=KEYS, bundle=str(path), escalate_below=None)
    async with kit.running(create_app(settings, kit.backend())) as client:
        before = await _classify(kit, client)  # raw 0.62: calibrated 0.62 < 0.9, escalates
        assert before["action"] == "escalate" and before["confidence"] == 0.62
        assert (await _reload(kit, client, CLASSIFY)).status_code == 403

        _write(path, a=4.0, threshold=0.8)  # logit x4: 0.62 becomes 0.88, auto-decided at 0.8
        r = await _reload(kit, client)
        assert r.status_code == 200 and r.json()["changed"] is True
        assert r.json()["previous_policy_version"] == before["policy_version"]
        after = await _classify(kit, client)
        assert after["policy_version"] == r.json()["policy_version"] != before["policy_version"]
        assert after["action"] == "block" and after["confidence"] == 0.88

        for refused, why in (
            (lambda: _write(path, model_id="another-model"), "model_id"),
            (lambda: _write(path, mode="reasoning"), "mode"),
            (lambda: path.write_text("{not json"), "not a JSON calibration bundle"),
            (lambda: _write(path, a=2.0) or _set_dtype(path, "bfloat16"), "bfloat16"),
        ):
            refused()
            r = await _reload(kit, client)
            assert r.status_code == 409 and why in r.json()["error"]["message"], r.text
            still = await _classify(kit, client)
            assert still["policy_version"] == after["policy_version"] and still["action"] == "block"
        metrics = (await client.get("/metrics", headers=kit.bearer(INTERNAL))).text
    assert re.search(r'guardcal_bundle_reloads_total\{outcome="swapped"\} 1\.0', metrics)
    assert re.search(r'guardcal_bundle_reloads_total\{outcome="refused"\} 4\.0', metrics)


def _set_dtype(path, dtype):
    bundle = CalibrationBundle.load(path)
    bundle.extra["dtype"] = dtype
    bundle.save(path)


async def test_a_request_in_flight_finishes_on_the_policy_it_began_with(kit, make_settings, tmp_path):
    path = tmp_path / "served.json"
    _write(path, a=1.0, threshold=0.9)
    settings = make_settings(api_keys=KEYS, bundle=str(path), escalate_below=None, dtype="float32")
    release, scoring = asyncio.Event(), asyncio.Event()
    table = kit.table_handler()

    async def slow(texts):
        if texts == ["borderline joke"]:
            scoring.set()
            await release.wait()
        return table(texts)

    async with kit.running(create_app(settings, kit.backend(slow))) as client:
        async with anyio.create_task_group() as tg:
            result = {}

            async def in_flight():
                result["body"] = await _classify(kit, client)

            tg.start_soon(in_flight)
            await scoring.wait()
            _write(path, a=4.0, threshold=0.8)
            swapped = await _reload(kit, client)
            assert swapped.status_code == 200
            release.set()
        old = result["body"]
        assert old["policy_version"] == swapped.json()["previous_policy_version"]
        assert old["action"] == "escalate" and old["confidence"] == 0.62  # decided by the old bundle entirely
        new = await _classify(kit, client)
        assert new["policy_version"] == swapped.json()["policy_version"] and new["action"] == "block"


async def test_sighup_reloads_the_bundle(kit, make_settings, tmp_path):
    path = tmp_path / "served.json"
    _write(path, a=1.0, threshold=0.9)
    settings = make_settings(api_keys=KEYS, bundle=str(path), escalate_below=None)
    app = create_app(settings, kit.backend(), reload_on_sighup=True)
    async with kit.running(app) as client:
        before = (await _classify(kit, client))["policy_version"]
        _write(path, a=4.0, threshold=0.8)
        os.kill(os.getpid(), signal.SIGHUP)
        with anyio.fail_after(10):
            while (await _classify(kit, client))["policy_version"] == before:
                await anyio.sleep(0.02)
        _write(path, model_id="another-model")
        os.kill(os.getpid(), signal.SIGHUP)  # refused: logged, and the server goes on
        await anyio.sleep(0.2)
        assert (await _classify(kit, client))["action"] == "block"


async def test_a_server_without_a_bundle_refuses_a_reload(kit, make_settings):
    async with kit.running(create_app(make_settings(api_keys=KEYS), kit.backend())) as client:
        r = await _reload(kit, client)
        assert r.status_code == 409 and "--bundle none" in r.json()["error"]["message"]
