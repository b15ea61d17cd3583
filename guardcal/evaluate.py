"""``guardcal evaluate``: score datasets, write metrics, predictions, report and plots.

Outputs under ``OUT``:

- ``metrics.json``: ``{"<dataset>": {n, accuracy, ece, …}}``, dataset keys as given;
- ``predictions.jsonl``: ``dataset, id, label, pred, p_unsafe, confidence`` per example
  (``p_unsafe`` renormalised over the two labels; ``confidence`` the paper's
  full-vocabulary probability of the predicted label's decision token);
- ``report.md``: a Markdown table plus the run's model, adapter and prompt fingerprint;
- ``reliability_<dataset>.png``: reliability diagram + confidence histogram;
- ``run.json``: what was evaluated (model, adapter, mode, fingerprint, label spec).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from guardcal import __version__
from guardcal.assets import DEFAULT, DEFAULT_BUNDLE
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.metrics import METRIC_NAMES, compute_metrics
from guardcal.calibrate.plots import plot_reliability, slug
from guardcal.calibrate.thresholds import coverage_and_error
from guardcal.core.confidence import Scores
from guardcal.core.examples import UNSAFE, Example
from guardcal.core.prompt import PromptTemplate
from guardcal.data.loaders import load_dataset
from guardcal.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")

if TYPE_CHECKING:
    from guardcal.scoring.scorer import HFScorer

REPORT_METRICS = ("n", "accuracy", "ece", "brier", "auroc", "auroc_unsafe", "nll", "overconfident_ratio")


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    datasets: list[str]
    output: Path
    model: str = "default"
    adapter: str | None = None
    reasoning: bool = False
    limit: int | None = None
    data_dir: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    batch_size: int = 8
    max_input_tokens: int = 1024
    max_new_tokens: int = 256
    bundle: str | None = None
    progress: bool = True
    prompt: str | None = None

    def __post_init__(self) -> None:
        from guardcal.core.profiles import load_profile

        load_profile(self.prompt)  # a bad profile fails here, before any data or model loads
        if not self.datasets:
            raise ConfigError("no dataset given; pass --dataset xstest (repeatable)")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; use one of {DEVICES}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError(f"a dataset is listed twice in {self.datasets}; list each once")


def subsample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset of ``limit`` examples, in original order (both classes kept)."""
    if limit is None or limit >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:limit])
    return [examples[i] for i in keep]


def prediction_rows(dataset: str, examples: Sequence[Example], scores: Scores) -> list[dict[str, Any]]:
    """One JSON-ready row per example."""
    p_norm, conf, preds = scores.p_unsafe_norm, scores.confidence, scores.pred
    return [
        {
            "dataset": dataset,
            "id": ex.id,
            "label": ex.label,
            "pred": preds[i],
            "p_unsafe": float(p_norm[i]),
            "confidence": float(conf[i]),
            "label_mass": float(scores.label_mass[i]),
        }
        for i, ex in enumerate(examples)
    ]


def add_calibrated(rows: list[dict[str, Any]], bundle: CalibrationBundle) -> dict[str, Any]:
    """Add ``calibrated_p_unsafe`` / ``calibrated_confidence`` / ``action`` to rows; return escalation stats."""
    p_cal = bundle.calibrator().predict(np.array([r["p_unsafe"] for r in rows], dtype=np.float64))
    thresholds = bundle.get_thresholds()
    auto = thresholds.auto_mask(p_cal)
    for row, p, a in zip(rows, p_cal, auto, strict=True):
        row["calibrated_p_unsafe"] = float(p)
        row["calibrated_confidence"] = float(max(p, 1.0 - p))
        row["action"] = ("block" if p >= 0.5 else "allow") if a else "escalate"
    y = np.array([r["label"] == UNSAFE for r in rows], dtype=np.int64)
    return coverage_and_error(p_cal, y, thresholds)


def row_arrays(rows: Iterable[dict[str, Any]], calibrated: bool = False) -> tuple[Any, Any, Any, Any]:
    """``(y_unsafe, pred_unsafe, p_unsafe, confidence)`` arrays from prediction rows, raw or calibrated.

    Raw: the model's prediction, P(unsafe) over the two labels and the paper's confidence.
    Calibrated: the calibrated P(unsafe), its prediction (p ≥ 0.5) and confidence max(p, 1 − p).
    """
    rows = list(rows)
    y = np.array([r["label"] == UNSAFE for r in rows], dtype=np.int64)
    if calibrated:
        p = np.array([r["calibrated_p_unsafe"] for r in rows], dtype=np.float64)
        return y, (p >= 0.5).astype(np.int64), p, np.maximum(p, 1 - p)
    pred = np.array([r["pred"] == UNSAFE for r in rows], dtype=np.int64)
    p = np.array([r["p_unsafe"] for r in rows], dtype=np.float64)
    return y, pred, p, np.array([r["confidence"] for r in rows], dtype=np.float64)


def confidence_and_correct(rows: list[dict[str, Any]], calibrated: bool = False) -> tuple[Any, Any]:
    """Top-label confidence and 0/1 correctness (for reliability diagrams)."""
    y, pred, _, conf = row_arrays(rows, calibrated)
    return conf, (pred == y).astype(np.int64)


def metrics_from_rows(rows: Iterable[dict[str, Any]], calibrated: bool = False) -> dict[str, float | int | None]:
    """Recompute the metrics of one dataset from its prediction rows (raw or calibrated)."""
    return compute_metrics(*row_arrays(rows, calibrated))


def load_bundle(name: str) -> CalibrationBundle:
    """``default`` → the shipped bundle; anything else is a path to a bundle JSON."""
    path = DEFAULT_BUNDLE if name == DEFAULT else Path(name)
    if name == DEFAULT and not path.is_file():
        raise ConfigError("no default bundle is shipped in this build; pass --bundle FILE from guardcal calibrate")
    return CalibrationBundle.load(path)


@dataclass
class ScoringSession:
    """A loaded scorer and the identity a calibration bundle is checked against."""

    scorer: HFScorer
    model_id: str
    adapter_hash: str | None

    @property
    def template(self) -> PromptTemplate:
        return self.scorer.template

    def identity(self) -> dict[str, Any]:
        """What a bundle records and is checked against (the keyword arguments of check_compatible)."""
        return {
            "model_id": self.model_id,
            "adapter_hash": self.adapter_hash,
            "mode": self.template.mode,
            "prompt_fingerprint": self.template.fingerprint(self.scorer.spec.surfaces, self.scorer.windows),
            "label_spec": self.scorer.spec.to_dict(),
        }

    def profile(self) -> dict[str, Any]:
        """The prompt profile's ``describe()`` (kept in run.json and in bundles)."""
        return self.template.spec.describe()

    def items(self, examples: Sequence[Example]) -> list[Any]:
        """What is scored for each example: its text, or its conversation cut at the profile's judged turn."""
        spec = self.template.spec
        return [
            spec.judged(ex.messages, f"example {ex.id!r}: messages") if ex.messages else ex.text for ex in examples
        ]

    def check_bundle(self, bundle: CalibrationBundle) -> None:
        bundle.check_compatible(**self.identity(), prompt_profile=self.profile())


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` where PyTorch sees a GPU, else ``cpu``; ``cpu`` and ``cuda`` unchanged."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; use one of {DEVICES}")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def open_session(cfg: EvalConfig) -> ScoringSession:
    """Load the model (+ adapter) named by ``cfg`` and wrap it in a scorer."""
    from guardcal.core.profiles import load_profile
    from guardcal.models.loading import adapter_fingerprint, load_model, model_identity
    from guardcal.scoring.scorer import HFScorer

    profile = load_profile(cfg.prompt)
    template = PromptTemplate.for_profile(profile, cfg.reasoning)
    loaded = load_model(cfg.model, cfg.adapter, dtype=cfg.dtype, device=resolve_device(cfg.device))
    scorer = HFScorer(
        loaded.model,
        loaded.tokenizer,
        template,
        batch_size=cfg.batch_size,
        max_input_tokens=cfg.max_input_tokens,
        max_new_tokens=cfg.max_new_tokens,
        # the weights are fixed here (unlike training's evaluation), so score as the server does: the
        # instruction prefix's KV cache reused, direct reads packed, both self-checked at the first call
        prefix_cache=True,
        head=loaded.head,
    )
    return ScoringSession(scorer, model_identity(cfg.model), adapter_fingerprint(cfg.adapter))


def run_evaluation(cfg: EvalConfig) -> dict[str, dict[str, float | int | None]]:
    """Evaluate ``cfg.model`` on every dataset and write the outputs."""
    data = {key: subsample(load_dataset(key, cfg.data_dir), cfg.limit) for key in cfg.datasets}
    bundle = load_bundle(cfg.bundle) if cfg.bundle else None
    session = open_session(cfg)
    items = {key: session.items(examples) for key, examples in data.items()}  # bad conversations fail before scoring
    if bundle is not None:
        session.check_bundle(bundle)
    scorer = session.scorer
    cfg.output.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, dict[str, float | int | None]] = {}
    all_rows: list[dict[str, Any]] = []
    started = time.time()
    escalation: dict[str, Any] = {}
    for key, examples in data.items():
        scored = scorer.score(items[key], progress=cfg.progress)
        rows = prediction_rows(key, examples, scored.scores)
        if scored.reasoning is not None:
            for row, thought in zip(rows, scored.reasoning, strict=True):
                row["reasoning"] = thought
        if bundle is not None:
            escalation[key] = add_calibrated(rows, bundle)
        metrics[key] = metrics_from_rows(rows, calibrated=bundle is not None)
        all_rows.extend(rows)
        conf, correct = confidence_and_correct(rows, calibrated=bundle is not None)
        title = f"{_model_title(cfg)} on {key}" + (f" + {bundle.method}" if bundle else "")
        plot_reliability(conf, correct, cfg.output / f"reliability_{slug(key)}.png", title=title)
    run = {
        "guardcal_version": __version__,
        "model": cfg.model,
        "adapter": cfg.adapter,
        **session.identity(),
        "prompt_profile": session.profile(),
        "dtype": cfg.dtype,
        "limit": cfg.limit,
        "max_input_tokens": cfg.max_input_tokens,
        "max_new_tokens": cfg.max_new_tokens if cfg.reasoning else None,
        "datasets": {k: len(v) for k, v in data.items()},
        "seconds": round(time.time() - started, 1),
        "bundle": cfg.bundle,
        "escalation": escalation,
    }
    _write_outputs(cfg.output, metrics, all_rows, run)
    return metrics


def _model_title(cfg: EvalConfig) -> str:
    name = cfg.model + (f" + {Path(cfg.adapter).name}" if cfg.adapter else "")
    name += f", prompt {Path(cfg.prompt).stem}" if cfg.prompt and cfg.prompt != "default" else ""
    return name + (" (reasoning)" if cfg.reasoning else "")


def _write_outputs(out: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], run: dict[str, Any]) -> None:
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    with (out / "predictions.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown_report(metrics, run))


def _fmt(name: str, value: float | int | None) -> str:
    if value is None:
        return "n/a"
    if name == "n":
        return str(value)
    if name in ("auroc", "auroc_unsafe", "nll"):
        return f"{value:.3f}"
    return f"{100 * value:.1f}%"


def markdown_report(metrics: dict[str, dict[str, float | int | None]], run: dict[str, Any]) -> str:
    """A Markdown table of every metric per dataset."""
    names = [m for m in METRIC_NAMES if m in REPORT_METRICS] + [m for m in METRIC_NAMES if m not in REPORT_METRICS]
    lines = [
        f"# guardcal evaluate: {run['model']}" + (f" + {run['adapter']}" if run["adapter"] else ""),
        "",
        f"mode `{run['mode']}`, prompt profile `{run.get('prompt_profile', {}).get('name', 'default')}` "
        f"(`{run['prompt_fingerprint']}`), dtype {run['dtype']}, "
        f"guardcal {run['guardcal_version']}",
        "",
        "| dataset | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key, values in metrics.items():
        lines.append(f"| {key} | " + " | ".join(_fmt(n, values[n]) for n in names) + " |")
    lines += ["", "ECE: 15 equal-mass bins, top-label confidence (the paper's ECE).", ""]
    lines += [f"![{k}](reliability_{slug(k)}.png)" for k in metrics]
    return "\n".join(lines) + "\n"
