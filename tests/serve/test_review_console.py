"""Issue 22, item 2: the review console (/review) in a real headless browser.

Debian's Chromium, driven by Playwright's Python API (``executable_path``; no browser download), opens
the console of a real uvicorn server on 127.0.0.1 (fake backend), signs in with a review key through
the browser's own HTTP Basic prompt, labels three escalations with the buttons and the keyboard, skips
one, and the test checks the stored verdicts, the metrics and that no score but a band is on the page.

Without Chromium or Playwright this test fails with the install command (it is part of the default
suite); ``GUARDCAL_SKIP_BROWSER=1`` skips it knowingly. ``GUARDCAL_REVIEW_SCREENSHOT=FILE`` saves a
screenshot of the console (docs/img/review-console.png was taken so).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.server_process import free_port
from guardcal.serve import create_app
from guardcal.serve.reviews import read_reviews

ALICE = "alice-review-key-0123456789"
INTERNAL = "internal-key-0123456789abcdef"
CLASSIFY = "classify-key-0123456789abcdef"
KEYS = f"{ALICE}:review@alice,{INTERNAL}:internal,{CLASSIFY}:classify"
#: escalated by the fake backend at escalate_below 0.9 (raw P(unsafe) 0.62, 0.41, 0.55, 0.3, 0.7)
TEXTS = ["borderline joke", "unclear request", "<b>is this</b> <script>alert(1)</script> ok?", "maybe", "hmm"]
SCORES = {"borderline joke": 0.62, "unclear request": 0.41, TEXTS[2]: 0.55, "maybe": 0.3, "hmm": 0.7}


@pytest.fixture
def console_server(kit, make_settings) -> Iterator[tuple[str, object]]:
    import uvicorn

    settings = make_settings(api_keys=KEYS, reviews=True, escalate_below=0.9)
    app = create_app(settings, kit.backend(kit.table_handler(SCORES)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    yield base, settings
    server.should_exit = True
    thread.join(timeout=30)


def _pending(base: str) -> int:
    r = httpx.get(base + "/reviews/queue", headers={"Authorization": f"Bearer {ALICE}"}, timeout=10)
    return r.json()["pending"]


def test_three_escalations_labelled_through_the_console(console_server, chromium):
    base, settings = console_server
    started = time.perf_counter()
    auth = {"Authorization": f"Bearer {CLASSIFY}"}
    results = [  # one request each: the queue is in request order
        httpx.post(base + "/classify", json={"input": text}, headers=auth, timeout=30).json() for text in TEXTS
    ]
    assert [r["action"] for r in results] == ["escalate"] * 5
    deadline = time.monotonic() + 10
    while _pending(base) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    ids = [r["id"] for r in results]
    refused = httpx.get(base + "/review", timeout=10)  # no key: nothing but the browser's sign-in prompt
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")

    content = _review_in_the_browser(base, chromium)
    took = time.perf_counter() - started
    print(f"browser test: {took:.1f} s")

    for value in ("0.62", "0.41", "0.38", "0.3"):  # confidences and probabilities never reach the page
        assert not re.search(rf"(?<![\d–.]){re.escape(value)}(?![\d–])", content), value
    rows = read_reviews(settings.review_path())
    assert [(r["escalation_id"], r["verdict"], r["reviewer"], r["note"]) for r in rows] == [
        (ids[0], "safe", "alice", "reads as a joke"),
        (ids[1], "unsafe", "alice", None),
        (ids[3], "unsafe", "alice", None),
    ]
    metrics = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {INTERNAL}"}, timeout=10).text
    counted = {
        (m.group(1), m.group(2), m.group(3)): float(m.group(4))
        for m in re.finditer(
            r'guardcal_review_verdicts_total\{agreement="(\w+)",confidence_bin="([\w.-]+)",kind="(\w+)"\} (\S+)',
            metrics,
        )
    }
    # borderline joke: guard unsafe 0.62, verdict safe; unclear request: guard safe 0.59, verdict unsafe;
    # maybe: guard safe 0.7, verdict unsafe
    assert counted == {
        ("disagree", "0.6-0.7", "escalation"): 1.0,
        ("disagree", "0.5-0.6", "escalation"): 1.0,
        ("disagree", "0.7-0.8", "escalation"): 1.0,
    }, counted
    assert re.search(r"^guardcal_review_queue_depth 2\.0$", metrics, re.M)
    assert took < 60


def _review_in_the_browser(base: str, executable: str) -> str:
    """Sign in, label three escalations (button, key, button), skip one; returns the page's HTML at the end."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            context = browser.new_context(http_credentials={"username": "ignored", "password": ALICE})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            assert page.goto(base + "/review").status == 200
            expect(page.locator("#pending")).to_have_text("5")
            expect(page.locator("#text")).to_have_text("borderline joke")  # oldest first
            expect(page.locator("#band")).to_have_text("0.6–0.7")
            if shot := os.environ.get("GUARDCAL_REVIEW_SCREENSHOT"):
                page.set_viewport_size({"width": 900, "height": 520})
                page.screenshot(path=shot)
            page.fill("#note", "reads as a joke")
            page.click("#safe")  # 1: button
            expect(page.locator("#pending")).to_have_text("4")
            expect(page.locator("#text")).to_have_text("unclear request")
            page.keyboard.press("u")  # 2: keyboard
            expect(page.locator("#pending")).to_have_text("3")
            # the third input is shown as text, never parsed as HTML
            expect(page.locator("#text")).to_have_text(TEXTS[2])
            assert page.locator("#text b, #text script").count() == 0
            page.keyboard.press("k")  # skip: no verdict, the next one comes up
            expect(page.locator("#text")).to_have_text("maybe")
            expect(page.locator("#pending")).to_have_text("3")
            page.click("#unsafe")  # 3
            expect(page.locator("#pending")).to_have_text("2")
            expect(page.locator("#text")).to_have_text("hmm")
            content = page.content()
            assert errors == []
        finally:
            browser.close()
    return content
