"""The training log stays one record per step across a resume."""

from __future__ import annotations

import json

from guardcal.train.callbacks import JsonlLog


def test_drop_after_removes_steps_logged_after_the_checkpoint(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    for step in (5, 10, 11, 12):
        log.write({"step": step, "loss": float(step)})
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"step": 13, "lo')  # the kill cut the last line
    assert log.drop_after(10) == 3
    log.write({"step": 11, "loss": -1.0})  # the resumed run logs step 11 again
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 11]
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["loss"] == -1.0


def test_drop_after_without_a_log_is_a_no_op(tmp_path):
    assert JsonlLog(tmp_path / "missing.jsonl").drop_after(3) == 0
    assert not (tmp_path / "missing.jsonl").exists()
