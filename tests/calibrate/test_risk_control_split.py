"""The risk-control guarantee as `guardcal calibrate` fits it: thresholds on rows the calibrator never saw.

A seeded simulation with a known truth: raw scores ``s`` and ``P(unsafe | s) = g(s)`` (overconfident, with a
label-noise floor). Each trial draws a 300-row calibration set, writes it as a ``guardcal evaluate`` folder
and runs ``guardcal calibrate --predictions`` end to end; the bundle's calibrator and thresholds are then
applied to a large population from the same distribution, whose true error among auto-decided inputs (per
predicted label, from ``g``, not from sampled labels) is compared with α. Learn-Then-Test promises
P(error > α for some label) ≤ δ; the empirical violation rate over the trials must stay at or below δ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.risk_simulation import coverage, draw, population, true_errors  # the repo root is on pytest's path
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibration_run import split_fit_rows
from guardcal.cli import main

ALPHA, DELTA, N_CAL = 0.1, 0.1, 300
IDENTITY = {
    "model_id": "sim",
    "adapter_hash": None,
    "mode": "direct",
    "prompt_fingerprint": "sha256:sim",
    "label_spec": {"labels": ["safe", "unsafe"], "surfaces": ["Safe", "Unsafe"], "token_ids": [[1], [2]]},
    "dtype": "float32",
    "max_new_tokens": None,
}


def write_predictions(folder: Path, s: np.ndarray, y: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(IDENTITY))
    rows = []
    for key, idx in (("sim:calib", range(len(s))), ("sim:eval", range(20))):
        for i in idx:
            p = float(s[i])
            rows.append(
                {
                    "dataset": key,
                    "id": f"{key}-{i}",
                    "label": "unsafe" if y[i] else "safe",
                    "pred": "unsafe" if p >= 0.5 else "safe",
                    "p_unsafe": p,
                    "confidence": max(p, 1 - p),
                    "label_mass": 1.0,
                }
            )
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def calibrate(tmp: Path, trial: int, method: str, rows: str = "held-out") -> CalibrationBundle:
    s, y = draw(N_CAL, np.random.default_rng(trial))
    folder = tmp / f"{method}-{rows}-{trial}"
    write_predictions(folder, s, y)
    out = folder / "bundle.json"
    args = ["calibrate", "--predictions", str(folder), "--output", str(out), "--method", method]
    args += ["--fit-dataset", "sim:calib", "--eval-dataset", "sim:eval", "--no-progress"]
    args += ["--target-error", str(ALPHA), "--delta", str(DELTA), "--split-seed", str(trial)]
    args += ["--threshold-rows", rows]
    assert main(args) == 0
    return CalibrationBundle.load(out)


def violations_and_coverage(tmp: Path, method: str, trials: int, rows: str = "held-out") -> tuple[int, float]:
    """Trials whose bundle breaks the guarantee on the population, and the mean share it auto-decides there."""
    judged_on = population()
    violations, covered = 0, []
    for trial in range(trials):
        bundle = calibrate(tmp, trial, method, rows)
        calibrator, thresholds = bundle.calibrator(), bundle.get_thresholds()
        violations += any(e > ALPHA for e in true_errors(calibrator, thresholds, judged_on))
        covered.append(coverage(calibrator, thresholds, judged_on))
    print(f"{method}, threshold rows {rows}: {violations}/{trials} violations, mean coverage {np.mean(covered):.3f}")
    return violations, float(np.mean(covered))


@pytest.mark.parametrize(("method", "trials"), [("isotonic", 200), ("platt", 200)])
def test_violation_rate_at_most_delta(tmp_path: Path, method: str, trials: int) -> None:
    violations, coverage = violations_and_coverage(tmp_path, method, trials)
    assert violations / trials <= DELTA, f"{method}: {violations}/{trials} trials broke the guarantee"
    assert coverage > 0.1, "the simulation must auto-decide something, or it tests nothing"


def test_all_rows_keep_the_guarantee_and_certify_more(tmp_path: Path) -> None:
    """--threshold-rows all: the calibrator and the thresholds share every row. The guarantee must still hold
    (the candidate sets are the raw score's), and the test, with 300 rows instead of 150, must certify more.
    (Temperature scaling selects the same raw-score sets here, so it would repeat Platt's numbers.)"""
    method, trials = "platt", 200
    violations, coverage = violations_and_coverage(tmp_path, method, trials, "all")
    assert violations / trials <= DELTA, f"{method}: {violations}/{trials} trials broke the guarantee"
    _, held_out = violations_and_coverage(tmp_path, method, 60)
    assert coverage > held_out + 0.02, f"all rows auto-decide {coverage:.3f}, held-out rows {held_out:.3f}"


def test_all_rows_bundle_records_that_every_row_did_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = calibrate(tmp_path, 0, "platt", "all")
    assert f"all {N_CAL} rows fit the calibrator and choose the thresholds" in capsys.readouterr().out
    split = bundle.extra["split"]
    assert split["threshold_rows"] == "all" and split["threshold_share"] == 1.0
    assert split["calibrator_ids"] == split["threshold_ids"] and len(split["threshold_ids"]) == N_CAL
    details = bundle.get_thresholds().details
    assert details["n"] == N_CAL, "Learn-Then-Test ran on every fit row"
    assert set(details["start_errors"]) == {"safe", "unsafe"}


def test_all_rows_refuse_a_calibrator_that_does_not_keep_the_score_order(tmp_path: Path, capsys) -> None:
    s, y = draw(N_CAL, np.random.default_rng(0))
    args = ["calibrate", "--output", str(tmp_path / "b.json"), "--fit-dataset", "sim:calib"]
    args += ["--eval-dataset", "sim:eval", "--no-progress", "--threshold-rows", "all"]
    write_predictions(tmp_path / "isotonic", s, y)
    assert main([*args, "--predictions", str(tmp_path / "isotonic"), "--method", "isotonic"]) != 0
    assert "isotonic's flat steps are fitted on the same labels" in capsys.readouterr().err
    write_predictions(tmp_path / "backwards", s, 1 - y)  # P(unsafe) ranks these labels backwards: slope < 0
    assert main([*args, "--predictions", str(tmp_path / "backwards"), "--method", "platt"]) != 0
    err = capsys.readouterr().err
    assert "does not keep the raw score's order" in err and "--threshold-rows held-out" in err


def test_bundle_records_disjoint_split(tmp_path: Path) -> None:
    bundle = calibrate(tmp_path, 0, "isotonic")
    split = bundle.extra["split"]
    cal_ids, th_ids = set(split["calibrator_ids"]), set(split["threshold_ids"])
    assert cal_ids and th_ids and not cal_ids & th_ids, "the thresholds must come from rows the calibrator never saw"
    assert len(cal_ids | th_ids) == N_CAL == bundle.extra["fit_n"]
    assert bundle.extra["calibrator_n"] == len(cal_ids) and bundle.extra["threshold_n"] == len(th_ids)
    assert bundle.get_thresholds().details["n"] == len(th_ids), "LTT ran on the held-out rows only"


def test_split_is_stratified_and_seeded() -> None:
    rows = [{"id": str(i), "label": "unsafe" if i % 3 == 0 else "safe"} for i in range(90)]
    fit, held = split_fit_rows(rows, 0.5, seed=1)
    assert sum(r["label"] == "unsafe" for r in held) == 15 and len(held) == 45
    assert [r["id"] for r in split_fit_rows(rows, 0.5, seed=1)[1]] == [r["id"] for r in held]
    assert [r["id"] for r in split_fit_rows(rows, 0.5, seed=2)[1]] != [r["id"] for r in held]


def test_threshold_share_must_leave_rows_on_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_predictions(tmp_path, *draw(N_CAL, np.random.default_rng(0)))
    args = ["calibrate", "--predictions", str(tmp_path), "--output", str(tmp_path / "b.json")]
    args += ["--fit-dataset", "sim:calib", "--eval-dataset", "sim:eval", "--threshold-share", "0"]
    assert main(args) != 0
    assert "--threshold-share must be in (0, 1)" in capsys.readouterr().err


def test_start_errors_lets_one_early_error_be_absorbed() -> None:
    from guardcal.calibrate.thresholds import risk_controlled_thresholds

    # 200 predicted-safe rows, confidences falling from 0.999; the single error sits among the top 20
    p = np.linspace(0.001, 0.2, 200)
    y = np.zeros(200, dtype=int)
    y[5] = 1
    at_0 = risk_controlled_thresholds(p, y, 0.05, 0.1, per_label=False)
    at_2 = risk_controlled_thresholds(p, y, 0.05, 0.1, per_label=False, start_errors=2)
    assert at_0.escalate_all == ("safe", "unsafe"), "with s = 0 the walk starts at ~45 rows and 1 error stops it"
    assert not at_2.escalate_all and at_2.details["calibration"]["coverage"] > 0.5
    assert at_2.details["start_errors"] == {"safe": 2, "unsafe": 2}
    with pytest.raises(Exception, match="start_errors"):
        risk_controlled_thresholds(p, y, 0.05, 0.1, start_errors=-1)


def test_start_errors_per_label_is_validated_and_recorded() -> None:
    from guardcal.calibrate.thresholds import risk_controlled_thresholds
    from guardcal.errors import CalibrationError

    p, y = np.linspace(0.001, 0.999, 100), (np.linspace(0, 1, 100) > 0.5).astype(int)
    t = risk_controlled_thresholds(p, y, 0.1, 0.1, start_errors={"safe": 0, "unsafe": 3})
    assert t.details["groups"]["safe"]["start_errors"] == 0 and t.details["groups"]["unsafe"]["start_errors"] == 3
    with pytest.raises(CalibrationError, match="needs 'safe' and 'unsafe'"):
        risk_controlled_thresholds(p, y, 0.1, 0.1, start_errors={"safe": 1})
    with pytest.raises(CalibrationError, match="whole number"):
        risk_controlled_thresholds(p, y, 0.1, 0.1, start_errors={"safe": 1, "unsafe": 1.5})  # type: ignore[dict-item]


def test_choose_start_errors_maximises_coverage_on_its_own_rows() -> None:
    from guardcal.calibrate.thresholds import choose_start_errors, risk_controlled_thresholds

    # predicted-safe rows with one error among the most confident: s = 0 certifies nothing there, a
    # larger start absorbs it; predicted-unsafe rows are clean, so the smallest start (0) wins the tie
    p = np.concatenate([np.linspace(0.001, 0.2, 200), np.linspace(0.8, 0.999, 200)])
    y = np.concatenate([np.zeros(200, dtype=int), np.ones(200, dtype=int)])
    y[5] = 1
    chosen = choose_start_errors(p, y, target_error=0.05, delta=0.1)
    assert chosen["unsafe"] == 0 and chosen["safe"] > 0
    at_0 = risk_controlled_thresholds(p, y, 0.05, 0.1).details["groups"]["safe"]["n_auto"]
    at_chosen = risk_controlled_thresholds(p, y, 0.05, 0.1, start_errors=chosen).details["groups"]["safe"]["n_auto"]
    assert at_chosen > at_0


def test_calibrate_warns_with_the_fit_rows_share_when_a_label_is_never_auto_decided(tmp_path: Path, capsys) -> None:
    """A target no threshold can meet: calibrate says which label is never auto-decided and the share of the fit
    rows that will escalate, and the bundle records that share for the server's start-up warning."""
    s, y = draw(N_CAL, np.random.default_rng(0))
    write_predictions(tmp_path / "run", s, y)
    out = tmp_path / "bundle.json"
    args = ["calibrate", "--predictions", str(tmp_path / "run"), "--output", str(out), "--no-progress"]
    args += ["--fit-dataset", "sim:calib", "--eval-dataset", "sim:eval", "--target-error", "0.001"]
    assert main(args) == 0
    err = capsys.readouterr().err
    bundle = CalibrationBundle.load(out)
    t = bundle.get_thresholds()
    assert t.escalate_all, "a 0.1% target on 150 threshold rows certifies nothing"
    shares = bundle.extra["fit_escalation"]
    p_fit = bundle.calibrator().predict(s)
    assert shares["n"] == N_CAL and shares["rows"] == "fit"
    assert shares["escalate"] == pytest.approx(1 - t.auto_mask(p_fit).mean())
    assert "WARNING: the thresholds certify nothing for predicted-" in err
    assert f"on the {N_CAL} fit rows {100 * shares['escalate']:.1f}% escalate" in err
    assert "raise --target-error" in err


def test_label_free_start_errors_reads_the_scores_only() -> None:
    from guardcal.calibrate.thresholds import label_free_start_errors
    from guardcal.errors import CalibrationError

    targets = {"target_error": 0.05, "delta": 0.1}
    # sure of every row: drawn labels agree with the scores, so the first testable start (0) covers the most
    sure = np.concatenate([np.full(150, 1e-5), np.full(150, 1 - 1e-5)])
    assert label_free_start_errors(sure, **targets) == {"safe": 0, "unsafe": 0}
    # predicted-safe rows at P(unsafe) 0.01-0.03 (drawn errors come early, a later start absorbs them); the
    # predicted-unsafe rows stay sure
    unsure = np.concatenate([np.linspace(0.01, 0.03, 250), np.full(50, 1 - 1e-5)])
    chosen = label_free_start_errors(unsure, **targets)
    assert chosen["safe"] > 0 and chosen["unsafe"] == 0
    assert label_free_start_errors(unsure, **targets) == chosen, "seeded: the same scores give the same start"
    with pytest.raises(CalibrationError, match="draws"):
        label_free_start_errors(unsure, **targets, draws=0)


@pytest.mark.parametrize("weighted", [False, True])
def test_start_choice_walks_match_the_thresholds_each_start_certifies(weighted: bool) -> None:
    """The start choosers compute each label's p-values once and walk from every start; what they count as
    auto-decided must be what risk_controlled_thresholds certifies with that start, row for row."""
    from guardcal.calibrate.thresholds import START_ERROR_CHOICES, _StartWalks, risk_controlled_thresholds

    seen: set[float] = set()
    for seed in range(12):
        s, y = draw(int(np.random.default_rng(seed).integers(60, 400)), np.random.default_rng(seed))
        w = np.random.default_rng(seed).uniform(0.5, 3.0, s.size) if weighted else None
        targets = {"target_error": (0.05, 0.1)[seed % 2], "delta": 0.1, "target_error_unsafe": 0.2}
        walks = _StartWalks(s, **targets, choices=START_ERROR_CHOICES, sample_weight=w).covered(y)
        for start in START_ERROR_CHOICES:
            groups = risk_controlled_thresholds(s, y, **targets, start_errors=start, sample_weight=w).details["groups"]
            assert walks[start] == {label: float(g["n_auto"]) for label, g in groups.items()}, (seed, start)
            seen.update(walks[start].values())
    assert len(seen) > 10, "the starts must lead to many different outcomes, or this compares nothing"
