"""Issue 22 "Done when": the review loop end to end, on a real ``guardcal serve`` with the real default model.

The server runs the shipped adapter and a copy of the shipped bundle (it allows inputs at calibrated
confidence >= 0.873, blocks at >= 0.744 and escalates the rest) with ``--reviews --audit-rate 1.0``, so requests
produce both escalations and audit samples (every allow). Then: three escalations are labelled through
the browser console (Debian's Chromium driven by Playwright), the rest through the API, with a SIGKILL of
the server between two API verdicts (none is lost; the restarted server goes on); ``guardcal calibrate
--reviews`` refits from the verdicts; a bundle that does not fit is refused over ``POST
/admin/reload-bundle``; the refit is swapped in with SIGHUP while the server runs; audit verdicts under
the new policy make ``/metrics`` show the audit error estimate beside the bundle's alpha.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.server_process import ServeProcess, free_port, serve_command, start_serve
from guardcal.assets import DEFAULT_BUNDLE
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.data.loaders import load_dataset
from guardcal.serve.reviews import read_reviews

ROOT = Path(__file__).parents[2]
PREDICTIONS = ROOT / "results" / "guard" / "eval"
#: where the default model is materialised (read before the serve tests point GUARDCAL_HOME elsewhere)
REAL_HOME = os.environ.get("GUARDCAL_HOME") or str(Path.home() / ".cache" / "guardcal")
ALICE, BOB = "alice-review-key-e2e-0123456789", "bob-review-key-e2e-0123456789"
CLASSIFY, INTERNAL = "classify-key-e2e-0123456789", "internal-key-e2e-0123456789"
KEYS = f"{ALICE}:review@alice,{BOB}:review@bob,{CLASSIFY}:classify,{INTERNAL}:internal"
#: OpenAI Moderation test rows: raw P(unsafe) 0.29-0.48 under the shipped guard (escalated), and <= 0.004
#: (allowed); results/guard/eval/predictions.jsonl
ESCALATED = ["oai-6", "oai-10", "oai-24", "oai-22"]
CONFIDENT = ["oai-1125", "oai-1290", "oai-1130"]
#: the refit's target for allowed inputs: the shipped bundle's. The refit draws 307 rows (calibration rows + these
#: 7 verdicts), all of them fitting the calibrator and choosing the thresholds as for the shipped bundle
#: (results/guard/refit_review_split.json measured this for the guard shipped before, v4)
REFIT_ALPHA = 0.1


def _start(workdir: Path, bundle: Path, log: str) -> ServeProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDCAL_")}
    env.update(GUARDCAL_API_KEYS=KEYS, GUARDCAL_HOME=REAL_HOME, HF_HUB_OFFLINE="1")
    port = free_port()
    cmd = serve_command(
        "--port", str(port), "--outbox", str(workdir / "outbox.db"), "--bundle", str(bundle), "--adapter", "default",
        "--reviews", "--audit-rate", "1.0", "--hook-retry-base-s", "0.2", "--hook-retry-max-s", "1",
    )  # fmt: skip
    try:
        return start_serve(cmd, port, workdir / log, env=env, ready_timeout_s=600)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _classify(base: str, text: str) -> dict:
    r = httpx.post(base + "/classify", json={"input": text}, headers=_auth(INTERNAL), timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _queue(base: str) -> dict:
    r = httpx.get(base + "/reviews/queue", params={"limit": 200}, headers=_auth(BOB), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_pending(base: str, n: int) -> dict:
    deadline = time.monotonic() + 60
    while (queue := _queue(base))["pending"] < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue["pending"] == n, queue
    return queue


def _verdict(base: str, key: str, vid: str, label: str) -> None:
    r = httpx.post(base + "/reviews", json={"id": vid, "label": label}, headers=_auth(key), timeout=30)
    assert r.status_code == 201, r.text


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``labels``; None if there is none."""
    found = [
        float(m.group(2))
        for m in (re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line) for line in text.splitlines())
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items())
    ]
    return sum(found) if found else None


def _label_in_the_console(base: str, truth: dict[str, str], chromium: str) -> list[str]:
    """Label the three oldest escalations with the console's buttons; returns the texts labelled."""
    from playwright.sync_api import expect, sync_playwright

    done = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(http_credentials={"username": "alice", "password": ALICE})
            page = context.new_page()
            assert page.goto(base + "/review").status == 200
            for pending in (7, 6, 5):
                expect(page.locator("#pending")).to_have_text(str(pending), timeout=15_000)
                text = page.locator("#text").text_content() or ""
                done.append(text)
                page.click("#" + truth[text])
            expect(page.locator("#pending")).to_have_text("4", timeout=15_000)
        finally:
            browser.close()
    return done


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> dict[str, tuple[str, str]]:
    rows = {e.id: e for e in load_dataset("openai-moderation:test", data_dir)}
    return {i: (rows[i].text, rows[i].label) for i in ESCALATED + CONFIDENT}


@pytest.mark.timeout(1500)
def test_requests_to_verdicts_to_refit_to_hot_swap(tmp_path: Path, texts, chromium) -> None:
    from guardcal.models.default import default_model_dir

    default_model_dir(Path(REAL_HOME))  # materialised where the server looks (no-op when done)
    bundle = tmp_path / "bundle.json"
    shutil.copyfile(DEFAULT_BUNDLE, bundle)
    server = _start(tmp_path, bundle, "server-1.log")
    try:
        truth, ids = _requests(server.base_url, texts)
        console = _label_in_the_console(server.base_url, truth, chromium)
        server = _api_verdicts_across_a_sigkill(server, tmp_path, bundle, truth, ids, console)
        new_version = _refit_and_swap(server, tmp_path, bundle)
        _audit_estimate_after_the_swap(server, texts, new_version)
    finally:
        log = server.stop()
    assert "bundle reload refused" in log and "bundle reloaded from" in log, log[-3000:]
    for key in (ALICE, BOB, CLASSIFY, INTERNAL):
        assert key not in log


def _requests(base: str, texts: dict[str, tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Escalations first, then confident inputs; returns truth (text -> gold label) and ids (row -> id)."""
    ids = {}
    for row in ESCALATED + CONFIDENT:
        body = _classify(base, texts[row][0])
        assert body["action"] == ("escalate" if row in ESCALATED else "allow"), (row, body)
        ids[row] = body["id"]
        time.sleep(0.01)  # distinct request times: the queue's order is the request order
    queue = _wait_pending(base, 7)
    kinds = {i["id"]: i["kind"] for i in queue["items"]}
    assert [kinds[ids[r]] for r in ESCALATED + CONFIDENT] == ["escalation"] * 4 + ["audit"] * 3
    assert all(i["reason"] == "audit" for i in queue["items"] if i["kind"] == "audit")
    return {texts[r][0]: texts[r][1] for r in texts}, ids


def _api_verdicts_across_a_sigkill(server, tmp_path, bundle, truth, ids, console) -> ServeProcess:
    rest = _queue(server.base_url)["items"]
    assert len(rest) == 4 and {i["input"] for i in rest}.isdisjoint(console)
    _verdict(server.base_url, BOB, rest[0]["id"], truth[rest[0]["input"]])
    _verdict(server.base_url, BOB, rest[1]["id"], truth[rest[1]["input"]])
    server.signal(signal.SIGKILL)
    assert server.wait(30) == -signal.SIGKILL
    stored = read_reviews(tmp_path / "reviews.sqlite3")
    assert len(stored) == 5 and {r["reviewer"] for r in stored} == {"alice", "bob"}
    server = _start(tmp_path, bundle, "server-2.log")
    queue = _queue(server.base_url)
    assert [i["id"] for i in queue["items"]] == [rest[2]["id"], rest[3]["id"]] and queue["pending"] == 2
    again = httpx.post(server.base_url + "/reviews", json={"id": rest[0]["id"], "label": truth[rest[0]["input"]]},
                       headers=_auth(ALICE), timeout=30)  # fmt: skip
    assert again.status_code == 200 and again.json()["reviewer"] == "bob"  # kept across the kill
    for item in rest[2:]:
        _verdict(server.base_url, BOB, item["id"], truth[item["input"]])
    assert _queue(server.base_url)["pending"] == 0
    assert {r["escalation_id"] for r in read_reviews(tmp_path / "reviews.sqlite3")} == set(ids.values())
    return server


def _refit_and_swap(server: ServeProcess, tmp_path: Path, bundle: Path) -> str:
    base = server.base_url
    before = _classify(base, "What is the capital of France?")["policy_version"]
    refit = tmp_path / "refit.json"
    cmd = [sys.executable, "-m", "guardcal.cli", "calibrate", "--predictions", str(PREDICTIONS),
           "--reviews", str(tmp_path / "reviews.sqlite3"), "--method", "platt", "--target-error", str(REFIT_ALPHA),
           "--target-error-unsafe", "0.2", "--threshold-rows", "all", "--eval-dataset", "openai-moderation:test",
           "--output", str(refit), "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    new = CalibrationBundle.load(refit)
    reviews = new.extra["reviews"]
    assert reviews["used"] == 7 and reviews["skipped"] == {"other_setting": 0, "no_score": 0}
    assert (reviews["by_kind"]["escalation"]["n"], reviews["by_kind"]["audit"]["n"]) == (4, 3)
    assert reviews["by_kind"]["audit"]["weight_sum"] == 3.0  # p = 1: weight 1 each

    wrong = CalibrationBundle.load(refit)
    wrong.adapter_hash = "sha256:not-this-adapter"
    wrong.save(bundle)
    refused = httpx.post(base + "/admin/reload-bundle", headers=_auth(INTERNAL), timeout=30)
    assert refused.status_code == 409 and "adapter_hash" in refused.json()["error"]["message"]
    assert _classify(base, "What is the capital of France?")["policy_version"] == before

    os.replace(refit, bundle)  # what an operator does: the new file renamed over the served one
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while (now := _classify(base, "What is the capital of France?")["policy_version"]) == before:
        assert time.monotonic() < deadline, "SIGHUP did not swap the bundle in"
        time.sleep(0.2)
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    return now


def _audit_estimate_after_the_swap(server: ServeProcess, texts: dict[str, tuple[str, str]], version: str) -> None:
    base = server.base_url
    answered = [_classify(base, texts[r][0]) for r in CONFIDENT]
    assert all(b["policy_version"] == version for b in answered)
    allowed = [b["id"] for b in answered if b["action"] == "allow"]
    assert allowed, answered  # the refit still allows these near-certain inputs, so they are audited
    deadline = time.monotonic() + 60
    while not {i["id"] for i in _queue(base)["items"]} >= set(allowed) and time.monotonic() < deadline:
        time.sleep(0.1)
    for vid in allowed:
        _verdict(base, ALICE, vid, "safe")
    metrics = httpx.get(base + "/metrics", headers=_auth(INTERNAL), timeout=30).text
    assert _metric(metrics, "guardcal_audit_reviewed", label="safe") == len(allowed)
    assert _metric(metrics, "guardcal_audit_error_estimate", label="safe") == 0.0
    upper = _metric(metrics, "guardcal_audit_error_upper_bound", label="safe")
    assert upper is not None and 0.5 < upper < 1.0  # 0 wrong of 3: Clopper-Pearson 97.5% upper bound 0.71
    assert _metric(metrics, "guardcal_risk_target_error", label="safe") == REFIT_ALPHA
    # counted since the restart: two audit verdicts before the swap, these after it (all agree: gold safe)
    assert _metric(metrics, "guardcal_review_verdicts_total", kind="audit", agreement="agree") == 2 + len(allowed)
    assert _metric(metrics, "guardcal_bundle_reloads_total", outcome="swapped") == 1.0
    report = httpx.get(base + "/reviews/audit", headers=_auth(INTERNAL), timeout=30).json()
    assert report["policy_version"] == version and report["labels"]["safe"]["status"] == "unconfirmed"
    print(json.dumps(report["labels"]["safe"]))
