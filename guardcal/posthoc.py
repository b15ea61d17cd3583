"""``guardcal calibrate``: fit a post-hoc calibrator and escalation thresholds, write the bundle.

Scores the fit split (``openai-moderation:calib``) with the shared scorer,
fits Platt / isotonic / temperature on P(unsafe) renormalised over the two
labels, chooses thresholds (fixed, or risk-controlled with Learn-Then-Test),
and evaluates before and after on the evaluation sets. Writes the bundle JSON
and, with ``report``, a Markdown report with reliability diagrams before/after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardcal.calibrate.base import make_calibrator
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.plots import plot_reliability, slug
from guardcal.calibrate.thresholds import Thresholds, fixed_thresholds, risk_controlled_thresholds
from guardcal.data.datasets import load_dataset
from guardcal.errors import ConfigError
from guardcal.evaluate import (
    EvalConfig,
    add_calibrated,
    confidence_and_correct,
    metrics_from_rows,
    open_session,
    prediction_rows,
    subsample,
)
from guardcal.types import UNSAFE


@dataclass
class CalibrateConfig:
    """What to fit and where to write it."""

    output: Path
    method: str = "isotonic"
    model: str = "default"
    adapter: str | None = None
    reasoning: bool = False
    data_dir: str | None = None
    fit_dataset: str = "openai-moderation:calib"
    eval_datasets: list[str] = field(default_factory=lambda: ["openai-moderation:test", "xstest"])
    target_error: float = 0.05
    target_error_unsafe: float | None = None
    delta: float = 0.1
    threshold: float | None = None
    report: Path | None = None
    dtype: str = "float32"
    max_input_tokens: int = 1024
    max_new_tokens: int = 256
    limit: int | None = None
    predictions: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        make_calibrator(self.method)  # fails early on an unknown method


def choose_thresholds(cfg: CalibrateConfig, p_cal: np.ndarray, y: np.ndarray) -> Thresholds:
    if cfg.threshold is not None:
        return fixed_thresholds(cfg.threshold)
    return risk_controlled_thresholds(
        p_cal, y, target_error=cfg.target_error, delta=cfg.delta, target_error_unsafe=cfg.target_error_unsafe
    )


Rows = dict[str, list[dict[str, Any]]]


def score_rows(cfg: CalibrateConfig) -> tuple[Rows, dict[str, Any]]:
    """Score the fit and evaluation sets; return prediction rows, the scorer's identity and dtype/budget."""
    session = open_session(
        EvalConfig(
            datasets=[cfg.fit_dataset],
            output=cfg.output,
            model=cfg.model,
            adapter=cfg.adapter,
            reasoning=cfg.reasoning,
            dtype=cfg.dtype,
            max_input_tokens=cfg.max_input_tokens,
            max_new_tokens=cfg.max_new_tokens,
        )
    )
    rows: Rows = {}
    for key in [cfg.fit_dataset, *cfg.eval_datasets]:
        examples = subsample(load_dataset(key, cfg.data_dir), cfg.limit)
        scored = session.scorer.score([e.text for e in examples], cfg.progress)
        rows[key] = prediction_rows(key, examples, scored.scores)
    return rows, {**session.identity(), **scoring_setting(cfg.dtype, cfg.max_new_tokens if cfg.reasoning else None)}


def rows_from_predictions(folder: Path, keys: list[str]) -> tuple[Rows, dict[str, Any]]:
    """Reuse a ``guardcal evaluate`` output folder instead of scoring again (identity, dtype/budget as run)."""
    run_file, pred_file = folder / "run.json", folder / "predictions.jsonl"
    for f in (run_file, pred_file):
        if not f.is_file():
            raise ConfigError(f"{f} not found; pass a folder written by guardcal evaluate")
    run = json.loads(run_file.read_text())
    rows: Rows = {key: [] for key in keys}
    for line in pred_file.read_text().splitlines():
        row = json.loads(line)
        if row["dataset"] in rows:
            rows[row["dataset"]].append(row)
    missing = [k for k, v in rows.items() if not v]
    if missing:
        raise ConfigError(f"{pred_file} has no predictions for {missing}; evaluate with --dataset for each of them")
    identity = {k: run[k] for k in ("model_id", "adapter_hash", "mode", "prompt_fingerprint", "label_spec")}
    return rows, {**identity, **scoring_setting(run.get("dtype"), run.get("max_new_tokens"))}


def scoring_setting(dtype: str | None, max_new_tokens: int | None) -> dict[str, Any]:
    """How the fit set was scored, kept in the bundle's ``extra`` so serving can score the same way."""
    return {"dtype": dtype, "max_new_tokens": max_new_tokens}


def run_calibration(cfg: CalibrateConfig) -> CalibrationBundle:
    """Fit, evaluate before/after, write the bundle (and the report)."""
    keys = [cfg.fit_dataset, *cfg.eval_datasets]
    rows, identity = rows_from_predictions(cfg.predictions, keys) if cfg.predictions else score_rows(cfg)
    fit = rows[cfg.fit_dataset]
    y_fit = np.array([r["label"] == UNSAFE for r in fit], dtype=np.int64)
    calibrator = make_calibrator(cfg.method).fit(np.array([r["p_unsafe"] for r in fit]), y_fit)
    thresholds = choose_thresholds(cfg, calibrator.predict(np.array([r["p_unsafe"] for r in fit])), y_fit)
    scoring = {k: identity.pop(k) for k in ("dtype", "max_new_tokens")}
    bundle = CalibrationBundle.from_fitted(
        calibrator,
        thresholds,
        **identity,
        extra={"fit_dataset": cfg.fit_dataset, "fit_n": len(fit), "adapter": cfg.adapter, **scoring},
    )
    metrics: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
    escalation: dict[str, Any] = {}
    for key in cfg.eval_datasets:
        metrics["before"][key] = metrics_from_rows(rows[key])
        escalation[key] = add_calibrated(rows[key], bundle)
        metrics["after"][key] = metrics_from_rows(rows[key], calibrated=True)
    bundle.metrics = metrics
    bundle.extra["escalation"] = escalation
    bundle.save(cfg.output)
    if cfg.report is not None:
        write_report(cfg.report, bundle, rows, cfg.eval_datasets)
    return bundle


def write_report(out: Path, bundle: CalibrationBundle, rows: dict[str, list[dict[str, Any]]], keys: list[str]) -> None:
    """report.md with before/after metrics, escalation coverage and reliability PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    names = ("accuracy", "ece", "brier", "nll", "auroc_unsafe")
    lines = [
        f"# guardcal calibrate: {bundle.method}",
        "",
        f"model `{bundle.model_id}`, adapter `{bundle.adapter_hash}`, mode `{bundle.mode}`, "
        f"prompt `{bundle.prompt_fingerprint}`; fitted on {bundle.extra['fit_dataset']} (n={bundle.extra['fit_n']})",
        "",
        "| dataset | stage | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for key in keys:
        for stage in ("before", "after"):
            m = bundle.metrics[stage][key]
            cells = [f"{m[n]:.3f}" if m[n] is not None else "n/a" for n in names]
            lines.append(f"| {key} | {stage} | " + " | ".join(cells) + " |")
        for stage, calibrated in (("before", False), ("after", True)):
            conf, correct = confidence_and_correct(rows[key], calibrated)
            plot_reliability(conf, correct, out / f"reliability_{slug(key)}_{stage}.png", f"{key}, {stage}")
    t = bundle.thresholds
    lines += ["", f"Thresholds ({t['method']}): safe ≥ {t['safe']:.3f}, unsafe ≥ {t['unsafe']:.3f}", ""]
    lines += ["| dataset | coverage (auto-decided) | error among auto-decided |", "|---|---|---|"]
    for key, e in bundle.extra["escalation"].items():
        err = "n/a" if e["error"] is None else f"{100 * e['error']:.1f}%"
        lines.append(f"| {key} | {100 * e['coverage']:.1f}% | {err} |")
    lines += [""] + [f"![{k} {s}](reliability_{slug(k)}_{s}.png)" for k in keys for s in ("before", "after")]
    (out / "report.md").write_text("\n".join(lines) + "\n")
