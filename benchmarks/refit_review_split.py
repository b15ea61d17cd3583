"""What the review-loop refit of tests/serve/test_review_loop_e2e.py certifies, without a server.

The e2e test serves the shipped guard, has reviewers give the gold label of seven OpenAI Moderation
test rows (four escalated, three allowed and audited at rate 1, so every verdict weighs 1), and refits
with ``guardcal calibrate --reviews --threshold-rows all``: 307 rows, the 300 calibration rows plus
the seven verdicts. This builds the same 307 rows from a ``guardcal evaluate`` folder (the verdicts'
P(unsafe) as evaluate scored them) and runs ``guardcal calibrate``'s own choice
(:class:`~guardcal.calibration_run.RowUse`, :func:`~guardcal.calibration_run.choose_thresholds`) at
several allow targets, to pick the test's target.

    python benchmarks/refit_review_split.py --predictions results/guard/eval \\
        --output results/guard/refit_review_split.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.threshold_io import emit
from guardcal.calibrate.base import make_calibrator
from guardcal.calibration_run import CalibrateConfig, RowUse, choose_thresholds, rows_from_predictions
from guardcal.core.examples import UNSAFE

FIT, TEST = "openai-moderation:calib", "openai-moderation:test"
#: the rows tests/serve/test_review_loop_e2e.py has reviewed (ESCALATED + CONFIDENT there)
VERDICT_IDS = ("oai-6", "oai-10", "oai-12", "oai-22", "oai-1125", "oai-1290", "oai-1130")


def refit(rows: list[dict[str, Any]], target_error: float) -> dict[str, Any]:
    cfg = CalibrateConfig(
        output=Path("unused.json"),
        method="platt",
        target_error=target_error,
        target_error_unsafe=0.2,
        threshold_rows="all",
    )
    use = RowUse.of(cfg, rows)
    p, y = np.array([r["p_unsafe"] for r in rows]), np.array([r["label"] == UNSAFE for r in rows], dtype=np.int64)
    calibrator = make_calibrator("platt").fit(p, y, np.array([r["weight"] for r in rows]))
    t = choose_thresholds(cfg, calibrator, use, weighted=True)
    keep = ("n", "n_auto", "errors", "p_value", "met")
    return {
        "safe": t.safe,
        "unsafe": t.unsafe,
        "start_errors": t.details["start_errors"],
        "groups": {label: {k: g[k] for k in keep} for label, g in t.details["groups"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=Path, required=True, help="guardcal evaluate folder (calib and test)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    scored = rows_from_predictions(args.predictions, [FIT, TEST])[0]
    verdicts = [{**r, "weight": 1.0} for r in scored[TEST] if r["id"] in VERDICT_IDS]
    fit = [{**r, "weight": 1.0} for r in scored[FIT]]
    if len(verdicts) != len(VERDICT_IDS):
        raise SystemExit(f"{args.predictions} lacks some of {VERDICT_IDS}")
    rows = [*fit, *verdicts]
    result: dict[str, Any] = {
        "how": (
            f"benchmarks/refit_review_split.py --predictions {args.predictions}: {len(rows)} rows (calibration rows "
            "and the 7 verdicts of tests/serve/test_review_loop_e2e.py, gold labels, weight 1), Platt, "
            "--target-error-unsafe 0.2 --threshold-rows all, as guardcal calibrate --reviews fits them"
        ),
        "verdicts": {r["id"]: {"label": r["label"], "p_unsafe": r["p_unsafe"]} for r in verdicts},
    }
    for alpha in (0.05, 0.1, 0.15):
        result[f"target_error_safe={alpha}"] = refit(rows, alpha)
    emit(result, args.output)


if __name__ == "__main__":
    main()
