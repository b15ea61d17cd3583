"""``guardcal calibrate``: fit a post-hoc calibrator and escalation thresholds, write the bundle.

Scores the fit split (``openai-moderation:calib``) with the shared scorer,
fits Platt / isotonic / temperature on P(unsafe) renormalised over the two
labels, chooses thresholds (fixed, or risk-controlled with Learn-Then-Test),
and evaluates before and after on the evaluation sets.

Risk control needs rows the calibrator has not seen: Learn-Then-Test's guarantee (error among
auto-decided ≤ α with probability ≥ 1 − δ) holds for a calibrator that is fixed before the
threshold rows are looked at. So the fit split is divided once, seeded and stratified by label
(:func:`split_fit_rows`): the calibrator is fitted on one part and the thresholds are chosen on
the other, and the bundle records which row ids served which purpose (``extra["split"]``). A
fixed ``--threshold`` looks at no labels, so then every fit row fits the calibrator.

``--threshold-rows all`` uses every fit row for both, which is sound only for a calibrator that keeps
the raw score's order (:meth:`~guardcal.calibrate.base.Calibrator.keeps_score_order`: Platt with a
positive slope, temperature; not isotonic, whose flat steps are fitted on the labels). Then each
candidate threshold on the calibrated confidence selects the inputs whose raw P(unsafe) lies beyond
a point, so the candidate sets and the order of the walk are the raw score's, which the labels did
not choose; the calibrator only names the point on the calibrated scale. The walk stops at the
calibrated 0.5 boundary, a data-dependent place, but every set the walk passes is certified together
(fixed-sequence testing controls the error of the whole sequence), so stopping early keeps the
guarantee. Where each label's walk starts is chosen without labels
(:func:`~guardcal.calibrate.thresholds.label_free_start_errors` on the raw scores). The test gets
all the rows instead of a share of them.

Writes the bundle JSON and, with ``report``, a Markdown report with reliability diagrams before/after.

With ``reviews`` (``--reviews reviews.sqlite3`` of ``guardcal serve --reviews``), reviewers' verdicts join the
fit split as labelled rows scored by the server (:mod:`guardcal.calibrate.verdicts`), each weighted by the
inverse of its sampling probability (escalation 1, audit ``1 / p``) in the calibrator's loss and in the
threshold test; they are split like the other fit rows, and ``extra["reviews"]`` records how many of which
kind, from which dates, were used.

Why this module is not in :mod:`guardcal.calibrate`: that package holds the fitting pieces
(calibrators, thresholds, bundles, metrics) and stays light (no torch, no data loading), so the
server can load a bundle without them. Running the command needs the shared scorer
(:mod:`guardcal.scoring`), the datasets and :mod:`guardcal.evaluate`, so it sits beside
``evaluate.py`` at the commands' level: core ← data, calibrate, scoring, backends ← train,
evaluate, calibration_run, serve ← cli.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardcal.calibrate.base import Calibrator, make_calibrator
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.plots import plot_reliability, slug
from guardcal.calibrate.thresholds import (
    Thresholds,
    choose_start_errors,
    escalation_shares,
    fixed_thresholds,
    label_free_start_errors,
    risk_controlled_thresholds,
)
from guardcal.calibrate.verdicts import read_reviews, verdict_fit_rows
from guardcal.core.examples import UNSAFE
from guardcal.data.loaders import load_dataset
from guardcal.errors import CalibrationError, ConfigError
from guardcal.evaluate import (
    EvalConfig,
    add_calibrated,
    confidence_and_correct,
    metrics_from_rows,
    open_session,
    prediction_rows,
    subsample,
)

THRESHOLD_ROWS = ("held-out", "all")


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
    threshold_share: float = 0.5
    threshold_rows: str = "held-out"  # or "all": every fit row fits the calibrator and chooses the thresholds
    split_seed: int = 0
    start_errors: int | None = None  # None: chosen per label on the calibrator's rows
    threshold: float | None = None
    report: Path | None = None
    dtype: str = "float32"
    max_input_tokens: int = 1024
    max_new_tokens: int = 256
    limit: int | None = None
    predictions: Path | None = None
    reviews: Path | None = None
    progress: bool = True
    prompt: str | None = None

    def __post_init__(self) -> None:
        from guardcal.core.profiles import load_profile

        make_calibrator(self.method)  # fails early on an unknown method
        load_profile(self.prompt)  # a bad prompt profile fails before any model loads
        if not 0.0 < self.threshold_share < 1.0:
            raise ConfigError(
                f"--threshold-share must be in (0, 1), got {self.threshold_share}: the thresholds need rows the "
                "calibrator was not fitted on, and the calibrator needs rows of its own (e.g. 0.5)"
            )
        if self.threshold_rows not in THRESHOLD_ROWS:
            raise ConfigError(f"--threshold-rows must be one of {list(THRESHOLD_ROWS)}, got {self.threshold_rows!r}")
        if self.threshold_rows == "all" and self.method == "isotonic":
            raise ConfigError(
                "--threshold-rows all needs a calibrator that keeps the raw score's order, and isotonic's flat steps "
                "are fitted on the same labels the thresholds are tested on; use --method platt or temperature, or "
                "--threshold-rows held-out"
            )


def split_fit_rows(
    rows: list[dict[str, Any]], threshold_share: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(calibrator rows, threshold rows): a seeded split, stratified by gold label, in input order.

    Each label's rows are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(share × count)`` go to the thresholds; every label keeps at least one row on each side
    when it has two or more.
    """
    rng = np.random.default_rng(seed)
    to_thresholds: set[int] = set()
    for label in sorted({r["label"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["label"] == label]
        k = int(round(threshold_share * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        to_thresholds.update(int(i) for i in rng.permutation(idx)[:k])
    fit = [r for i, r in enumerate(rows) if i not in to_thresholds]
    held = [r for i, r in enumerate(rows) if i in to_thresholds]
    return fit, held


RULES = {
    "fixed": "fixed threshold: no threshold rows, every fit row fits the calibrator",
    "held-out": "seeded split stratified by label (guardcal.calibration_run.split_fit_rows)",
    "all": (
        "every fit row fits the calibrator and chooses the thresholds: the calibrator keeps the raw score's "
        "order (guardcal.calibration_run, --threshold-rows all)"
    ),
}


@dataclass(frozen=True)
class RowUse:
    """Which fit rows fit the calibrator and which choose the thresholds, decided once (:meth:`of`).

    ``mode``: ``fixed`` (a fixed ``--threshold`` reads no labels: every row fits the calibrator, none chooses),
    ``held-out`` (the seeded split of :func:`split_fit_rows`) or ``all`` (every row does both)."""

    mode: str
    calibrator_rows: list[dict[str, Any]]
    threshold_rows: list[dict[str, Any]]
    seed: int
    share: float

    @classmethod
    def of(cls, cfg: CalibrateConfig, fit: list[dict[str, Any]]) -> RowUse:
        if cfg.threshold is not None:
            return cls("fixed", fit, [], cfg.split_seed, 0.0)
        if cfg.threshold_rows == "all":
            return cls("all", fit, fit, cfg.split_seed, 1.0)
        cal_rows, threshold_rows = split_fit_rows(fit, cfg.threshold_share, cfg.split_seed)
        return cls("held-out", cal_rows, threshold_rows, cfg.split_seed, cfg.threshold_share)

    def record(self) -> dict[str, Any]:
        """The bundle's ``extra["split"]``: the rule in words, and which row ids served which purpose."""
        return {
            "rule": RULES[self.mode],
            "threshold_rows": None if self.mode == "fixed" else self.mode,
            "seed": self.seed,
            "threshold_share": self.share,
            "calibrator_ids": [r["id"] for r in self.calibrator_rows],
            "threshold_ids": [r["id"] for r in self.threshold_rows],
        }


def choose_thresholds(cfg: CalibrateConfig, calibrator: Calibrator, use: RowUse, weighted: bool = False) -> Thresholds:
    """Learn-Then-Test thresholds on ``use.threshold_rows``, calibrated by ``calibrator`` (fitted on
    ``use.calibrator_rows``).

    Held-out threshold rows: with ``start_errors`` unset, the calibrator's own rows pick where each label's
    walk starts (:func:`choose_start_errors`), without looking at the threshold rows' labels. The same rows
    for both (``--threshold-rows all``): the calibrator must keep the raw score's order, and the start comes
    from the raw scores alone (:func:`label_free_start_errors`). ``weighted``: rows carry review weights.
    """
    if cfg.threshold is not None:  # use.mode == "fixed"
        return fixed_thresholds(cfg.threshold)
    targets: dict[str, Any] = {
        "target_error": cfg.target_error,
        "delta": cfg.delta,
        "target_error_unsafe": cfg.target_error_unsafe,
    }
    held = _w(use.threshold_rows) if weighted else None
    if use.mode == "all" and not calibrator.keeps_score_order():
        raise CalibrationError(
            f"the {calibrator.method} calibrator fitted here does not keep the raw score's order (a Platt slope <= 0 "
            "means P(unsafe) ranks these rows backwards), so --threshold-rows all cannot certify on its own rows; "
            "check the model and its label words, or use --threshold-rows held-out"
        )
    if cfg.start_errors is not None:
        start: int | dict[str, int] = cfg.start_errors
    elif use.mode == "all":
        start = label_free_start_errors(_p(use.threshold_rows), **targets, sample_weight=held)
    else:
        fitted = _w(use.calibrator_rows) if weighted else None
        p_fitted = calibrator.predict(_p(use.calibrator_rows))
        start = choose_start_errors(p_fitted, _y(use.calibrator_rows), **targets, sample_weight=fitted)
    p_cal = calibrator.predict(_p(use.threshold_rows))
    return risk_controlled_thresholds(p_cal, _y(use.threshold_rows), **targets, start_errors=start, sample_weight=held)


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
            prompt=cfg.prompt,
        )
    )
    rows: Rows = {}
    for key in [cfg.fit_dataset, *cfg.eval_datasets]:
        examples = subsample(load_dataset(key, cfg.data_dir), cfg.limit)
        scored = session.scorer.score(session.items(examples), cfg.progress)
        rows[key] = prediction_rows(key, examples, scored.scores)
    setting = scoring_setting(cfg.dtype, cfg.max_new_tokens if cfg.reasoning else None, cfg.max_input_tokens)
    return rows, {**session.identity(), "prompt_profile": session.profile(), **setting}


def cfg_prompt_differs(run: dict[str, Any], prompt: str | None) -> bool:
    """True when ``--prompt`` names a profile other than the one an evaluate run was scored with."""
    if prompt is None:
        return False
    from guardcal.core.profiles import differing_fields, load_profile

    recorded = run.get("prompt_profile") or load_profile("default").describe()
    return bool([d for d in differing_fields(recorded, load_profile(prompt).describe()) if d != "name"])


def rows_from_predictions(folder: Path, keys: list[str], prompt: str | None = None) -> tuple[Rows, dict[str, Any]]:
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
    if cfg_prompt_differs(run, prompt):
        raise ConfigError(
            f"{run_file} was scored with prompt profile {run.get('prompt_profile', {}).get('name', 'default')!r}, "
            f"not {prompt!r}; pass the same --prompt, or evaluate again with this one"
        )
    return rows, {
        **identity,
        "prompt_profile": run.get("prompt_profile"),
        **scoring_setting(run.get("dtype"), run.get("max_new_tokens"), run.get("max_input_tokens")),
    }


def scoring_setting(
    dtype: str | None, max_new_tokens: int | None, max_input_tokens: int | None = None
) -> dict[str, Any]:
    """How the fit set was scored, kept in the bundle's ``extra`` so serving can score the same way
    (dtype, reasoning budget, and the window budget each window of an input is cut to)."""
    return {"dtype": dtype, "max_new_tokens": max_new_tokens, "max_input_tokens": max_input_tokens}


def run_calibration(cfg: CalibrateConfig) -> CalibrationBundle:
    """Fit, evaluate before/after, write the bundle (and the report)."""
    keys = [cfg.fit_dataset, *cfg.eval_datasets]
    rows, identity = rows_from_predictions(cfg.predictions, keys, cfg.prompt) if cfg.predictions else score_rows(cfg)
    verdicts, provenance = review_rows(cfg.reviews, identity) if cfg.reviews else ([], None)
    fit = rows[cfg.fit_dataset] + verdicts
    use = RowUse.of(cfg, fit)
    weighted = bool(verdicts)
    cal_rows = use.calibrator_rows
    calibrator = make_calibrator(cfg.method).fit(_p(cal_rows), _y(cal_rows), _w(cal_rows) if weighted else None)
    thresholds = choose_thresholds(cfg, calibrator, use, weighted)
    scoring = {k: identity.pop(k) for k in ("dtype", "max_new_tokens", "max_input_tokens")}
    profile = identity.pop("prompt_profile", None)
    bundle = CalibrationBundle.from_fitted(
        calibrator,
        thresholds,
        **identity,
        extra={
            "fit_dataset": cfg.fit_dataset,
            "fit_n": len(fit),
            "calibrator_n": len(cal_rows),
            "threshold_n": len(use.threshold_rows),
            "split": use.record(),
            "fit_escalation": escalation_shares(thresholds, calibrator.predict(_p(fit)), "fit"),
            "adapter": cfg.adapter,
            **scoring,
            **({"prompt_profile": profile} if profile else {}),
            **({"reviews": provenance} if provenance is not None else {}),
        },
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


def rows_sentence(extra: dict[str, Any]) -> str:
    """Which fit rows fitted the calibrator and which chose the thresholds, for a bundle's ``extra``."""
    if extra["split"].get("threshold_rows") == "all":
        return f"all {extra['fit_n']} rows fit the calibrator and choose the thresholds"
    n_cal, n_thresholds = extra["calibrator_n"], extra["threshold_n"]
    return f"{n_cal} rows fit the calibrator, {n_thresholds} other rows choose the thresholds"


def review_rows(path: Path, identity: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The verdicts of a review store usable with this fit set's setting, and their provenance."""
    verdicts, provenance = verdict_fit_rows(read_reviews(path), identity, source=str(path))
    if not verdicts:
        left = provenance["skipped"]
        raise ConfigError(
            f"{path} holds no verdict this refit can use ({left['other_setting']} were read by another model, "
            f"adapter, prompt or mode; {left['no_score']} failed closed without a score): review escalations "
            "of a server running this setting first"
        )
    return verdicts, provenance


def _w(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([r.get("weight", 1.0) for r in rows], dtype=np.float64)


def _p(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([r["p_unsafe"] for r in rows], dtype=np.float64)


def _y(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([r["label"] == UNSAFE for r in rows], dtype=np.int64)


def write_report(out: Path, bundle: CalibrationBundle, rows: dict[str, list[dict[str, Any]]], keys: list[str]) -> None:
    """report.md with before/after metrics, escalation coverage and reliability PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    names = ("accuracy", "ece", "brier", "nll", "auroc_unsafe")
    extra = bundle.extra
    shared = rows_sentence(extra)
    lines = [
        f"# guardcal calibrate: {bundle.method}",
        "",
        f"model `{bundle.model_id}`, adapter `{bundle.adapter_hash}`, mode `{bundle.mode}`, "
        f"prompt `{bundle.prompt_fingerprint}`; fitted on {extra['fit_dataset']} (n={extra['fit_n']}: {shared})",
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
