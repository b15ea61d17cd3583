"""A guard's scorecard beside the TF-IDF yardstick: what it decides, and how often it is wrong when it does.

For a guard model scored by ``guardcal evaluate`` (its folder must hold ``openai-moderation:calib``,
``openai-moderation:test`` and ``xstest``), and for TF-IDF + logistic regression trained on the same
rows as the guard (``--tfidf-train``: the 500 training rows, or the guard's training mix), this runs
``guardcal calibrate --predictions`` with the same method, targets and rows (calibrator on one part
of the calibration split and Learn-Then-Test thresholds on the other, or both on all of it with
``--threshold-rows all``), then reports on test and XSTest:
accuracy and AUROC of the raw scores, ECE after calibration, and the share of inputs auto-decided
under the certified thresholds with the error among them (and the same at the fixed confidence 0.8,
the issue's TF-IDF reference point). Writes ``scorecard.json`` and ``scorecard.md``.

    python benchmarks/guard_scorecard.py --predictions results/guard/eval --output results/guard \\
        --method platt --target-error 0.05 --target-error-unsafe 0.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from guardcal.calibrate.thresholds import coverage_and_error, fixed_thresholds
from guardcal.calibration_run import CalibrateConfig, rows_from_predictions, run_calibration
from guardcal.core.examples import UNSAFE
from guardcal.data.loaders import load_dataset
from guardcal.evaluate import metrics_from_rows

FIT = "openai-moderation:calib"
EVAL_SETS = ("openai-moderation:test", "xstest")
TFIDF_IDENTITY = {
    "model_id": "tfidf-logreg",
    "adapter_hash": None,
    "mode": "direct",
    "prompt_fingerprint": "none",
    "label_spec": {"labels": ["safe", "unsafe"], "surfaces": ["Safe", "Unsafe"], "token_ids": [[0], [1]]},
    "dtype": None,
    "max_new_tokens": None,
}


def tfidf_predictions(folder: Path, data_dir: str | None, train_key: str) -> Path:
    """TF-IDF + LR (benchmarks/baselines.py's) scored on the fit and eval sets, as a guardcal evaluate folder."""
    try:
        from .baselines import tfidf_logreg
    except ImportError:  # run as a script: python benchmarks/NAME.py
        from baselines import tfidf_logreg  # type: ignore[no-redef]

    train = load_dataset(train_key, data_dir)
    clf = tfidf_logreg()
    clf.fit([e.text for e in train], [int(e.label == UNSAFE) for e in train])
    rows = []
    for key in (FIT, *EVAL_SETS):
        data = load_dataset(key, data_dir)
        for ex, p in zip(data, clf.predict_proba([e.text for e in data])[:, 1], strict=True):
            p = float(p)
            rows.append(
                {
                    "dataset": key,
                    "id": ex.id,
                    "label": ex.label,
                    "pred": "unsafe" if p >= 0.5 else "safe",
                    "p_unsafe": p,
                    "confidence": max(p, 1 - p),
                    "label_mass": 1.0,
                }
            )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(TFIDF_IDENTITY))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def decided_split(p: np.ndarray, y: np.ndarray, thresholds: Any) -> dict[str, float | None]:
    """The auto-decisions by kind: the share allowed and the unsafe share among them, the share blocked
    and the safe share among them (None where nothing was)."""
    auto = thresholds.auto_mask(p)
    allowed, blocked = auto & (p < 0.5), auto & (p >= 0.5)

    def share(part: np.ndarray, wrong: np.ndarray) -> float | None:
        return float((part & wrong).sum() / part.sum()) if part.any() else None

    return {
        "allowed": float(allowed.mean()),
        "unsafe_among_allowed": share(allowed, y == 1),
        "blocked": float(blocked.mean()),
        "safe_among_blocked": share(blocked, y == 0),
    }


def card(predictions: Path, bundle_out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate from ``predictions`` (same code path as ``guardcal calibrate``) and score the result."""
    cfg = CalibrateConfig(
        output=bundle_out,
        method=args.method,
        predictions=predictions,
        fit_dataset=FIT,
        eval_datasets=list(EVAL_SETS),
        target_error=args.target_error,
        target_error_unsafe=args.target_error_unsafe,
        delta=args.delta,
        threshold_share=args.threshold_share,
        threshold_rows=args.threshold_rows,
        start_errors=args.start_errors,
        progress=False,
    )
    bundle = run_calibration(cfg)
    rows, _ = rows_from_predictions(predictions, list(EVAL_SETS))
    out: dict[str, Any] = {"thresholds": {k: bundle.thresholds[k] for k in ("safe", "unsafe", "escalate_all")}}
    calibrator = bundle.calibrator()
    for key in EVAL_SETS:
        kept = rows[key]
        raw = metrics_from_rows(kept)
        p = calibrator.predict(np.array([r["p_unsafe"] for r in kept]))
        y = np.array([r["label"] == UNSAFE for r in kept], dtype=np.int64)
        certified = coverage_and_error(p, y, bundle.get_thresholds())
        at_08 = coverage_and_error(p, y, fixed_thresholds(0.8))
        out[key] = {
            "n": len(kept),
            "accuracy": raw["accuracy"],
            "auroc_unsafe": raw["auroc_unsafe"],
            "ece_calibrated": bundle.metrics["after"][key]["ece"],
            "accuracy_calibrated": bundle.metrics["after"][key]["accuracy"],
            "certified": {"coverage": certified["coverage"], "error": certified["error"]}
            | decided_split(p, y, bundle.get_thresholds()),
            "confidence_0.8": {"coverage": at_08["coverage"], "error": at_08["error"]},
        }
    return out


def markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def split(c: dict[str, Any]) -> str:
        if "allowed" not in c:  # a scorecard written before the split was recorded
            return "n/a"
        allowed = f"{pct(c['allowed'])} ({pct(c['unsafe_among_allowed'])})"
        return f"{allowed} · {pct(c['blocked'])} ({pct(c['safe_among_blocked'])})"

    rows = (
        "all of the calibration split, the calibrator's rows too"
        if args.threshold_rows == "all"
        else f"{args.threshold_share:.0%} of the calibration split"
    )
    lines = [
        f"# Guard scorecard ({args.method}; α safe {args.target_error}, α unsafe "
        f"{args.target_error_unsafe or args.target_error}, δ {args.delta}; thresholds on {rows})",
        "",
        "| model | set | accuracy | AUROC | ECE (calibrated) | auto-decided (certified) | its error "
        "| allowed (unsafe among them) · blocked (safe among them) | auto-decided (conf ≥ 0.8) | its error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for key in EVAL_SETS:
            m = r[key]
            auroc = "n/a" if m["auroc_unsafe"] is None else f"{m['auroc_unsafe']:.3f}"
            lines.append(
                f"| {name} | {key} | {pct(m['accuracy'])} | {auroc} | {pct(m['ece_calibrated'])} | "
                f"{pct(m['certified']['coverage'])} | {pct(m['certified']['error'])} | {split(m['certified'])} | "
                f"{pct(m['confidence_0.8']['coverage'])} | {pct(m['confidence_0.8']['error'])} |"
            )
    for name, r in results.items():
        t = r["thresholds"]
        lines.append(
            f"\n{name}: thresholds safe ≥ {t['safe']:.3f}, unsafe ≥ {t['unsafe']:.3f}"
            + (f" (always escalates: {', '.join(t['escalate_all'])})" if t["escalate_all"] else "")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=Path, required=True, help="guardcal evaluate folder of the guard")
    parser.add_argument("--name", default="guard", help="the guard's row name")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--tfidf-train", default="openai-moderation:train", help="TF-IDF's training rows: the guard's (a dataset key)"
    )
    parser.add_argument("--method", default="platt", choices=("platt", "isotonic", "temperature"))
    parser.add_argument("--target-error", type=float, default=0.05)
    parser.add_argument("--target-error-unsafe", type=float)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--threshold-share", type=float, default=0.5)
    parser.add_argument(
        "--threshold-rows", choices=("held-out", "all"), default="held-out", help="as guardcal calibrate's"
    )
    parser.add_argument(
        "--start-errors", type=int, default=None, help="as guardcal calibrate's (default: chosen on calibrator rows)"
    )
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    results = {
        args.name: card(args.predictions, args.output / "bundle.json", args),
        "tfidf-logreg": card(
            tfidf_predictions(args.output / "tfidf", args.data_dir, args.tfidf_train),
            args.output / "tfidf" / "bundle.json",
            args,
        ),
    }
    setting = {
        k: getattr(args, k)
        for k in (
            "method",
            "target_error",
            "target_error_unsafe",
            "delta",
            "threshold_share",
            "threshold_rows",
            "start_errors",
            "tfidf_train",
        )
    }
    (args.output / "scorecard.json").write_text(json.dumps({"setting": setting, **results}, indent=2) + "\n")
    (args.output / "scorecard.md").write_text(markdown(results, args))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
