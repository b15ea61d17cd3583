"""Faults against a real ``guardcal serve`` process on 127.0.0.1 (benchmarks/load_faults.py).

The server is guardcal's real app and ``serve()`` (uvicorn) over the fake backend, started as a
subprocess, so signals are real; the webhook receiver is a real HTTP server that goes down,
answers slowly or answers 500. "Count in" is the escalations the server answered, "count out"
what the receiver accepted. The real-model variant (SIGKILL under load) is in test_load.py.
"""

from __future__ import annotations

import pytest

from benchmarks import load_faults as lf  # benchmarks/ is importable: pytest's pythonpath has the repo root


def assert_exactly_once(delivery: dict, expected: int) -> None:
    assert delivery["complete"] and delivery["escalations_in"] == expected, delivery
    assert delivery["unique_out"] == expected and delivery["accepted_out"] == expected, delivery
    assert delivery["duplicates"] == delivery["missing"] == delivery["unexpected"] == 0, delivery
    assert delivery["bad_signatures"] == 0, delivery


@pytest.mark.timeout(300)
def test_webhook_down_slow_or_failing_changes_no_decision_or_latency_and_loses_nothing(tmp_path):
    slow_s = 5.0
    r = lf.webhook_fault_scenario("fake", tmp_path, n_per_phase=30, slow_s=slow_s, hold_s=2.5)
    assert list(r["phases"]) == ["healthy", "down", "error_500", "slow"]
    for name, phase in r["phases"].items():
        assert phase["status"] == {"200": 30} and phase["escalations"] == 10, (name, phase)
        # hooks run off the request path: no request waits for the 5 s receiver, escalated or not
        # (bounds are loose because the CI machine may be shared; typical p95 here is < 0.5 s)
        assert phase["latency_ok_ms"]["max"] < slow_s * 1000, (name, phase["latency_ok_ms"])
        assert phase["latency_p50_ms_by_action"]["escalate"] < slow_s * 1000 / 2, (name, phase)
    assert all(r["decisions_equal_to_healthy"].values()), r["decisions_equal_to_healthy"]
    assert_exactly_once(r["delivery"], expected=40)
    by_mode = r["delivery"]["receiver_attempts_by_mode"]
    assert by_mode.get("error", 0) >= 1 and by_mode.get("slow", 0) >= 1, by_mode  # the faults were hit
    assert r["failed_deliveries_retried"] >= 10 and r["outbox_depth_after"] == 0
    assert not r["api_key_in_server_log"] and not r["webhook_secret_in_server_log"]


@pytest.mark.timeout(300)
def test_sigkill_then_restart_delivers_every_escalation_exactly_once(tmp_path):
    r = lf.kill_restart_scenario("fake", tmp_path, n_before=30, n_after=10)
    assert r["kill_exit_code"] == -9
    assert r["before_kill"]["status"] == {"200": 30} and r["after_restart"]["status"] == {"200": 10}
    assert r["outbox_after_kill"] == {"pending": 30}  # written before each answer, survived the kill
    assert_exactly_once(r["delivery"], expected=40)
    assert r["outbox_at_end"] == {"delivered": 40}
    assert r["delivery"]["recovery_s"] < 20  # the restart released the dead process's leases


@pytest.mark.timeout(300)
@pytest.mark.parametrize("flush", [False, True], ids=["receiver-down-kept", "receiver-up-flushed"])
def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_keeps_or_flushes_the_outbox(tmp_path, flush):
    r = lf.sigterm_scenario("fake", tmp_path, in_flight=8, delay_ms=1500, flush=flush)
    assert r["in_flight_ok"] == 8 and r["in_flight_other"] == [], r
    assert r["new_request_after_sigterm"] in ("ConnectError", "HTTP 503"), r["new_request_after_sigterm"]
    assert r["exit_code"] in (0, -15) and r["shutdown_complete_logged"], r
    if flush:
        assert r["delivered_before_exit"] == 8 and r["outbox_after_exit"] == {"delivered": 8}
    else:
        assert r["delivered_before_exit"] == 0 and r["outbox_after_exit"] == {"pending": 8}
    assert_exactly_once(r["delivery_after_restart"], expected=8)


@pytest.mark.timeout(300)
def test_a_raising_backend_fails_closed_and_a_not_ready_one_answers_503(tmp_path):
    r = lf.backend_fault_scenario("fake", tmp_path, n=30)
    assert r["healthy"]["status"] == {"200": 30} and r["healthy"]["escalations"] == 10
    raising = r["raising"]
    assert raising["status"] == {"200": 30} and [tuple(d) for d in raising["decisions"]] == [("unsafe", "escalate")]
    assert r["backend_errors_counted"] == 30
    assert r["not_ready"] == {
        "readyz": 503,
        "readyz_retry_after": "5",
        "classify": 503,
        "classify_retry_after": "5",
        "healthz": 200,
    }
    assert r["recovered"]["readyz"] == 200 and r["recovered"]["status"] == {"200": 30}
