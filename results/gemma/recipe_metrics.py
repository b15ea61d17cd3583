"""Two runs of the same training recipe on the calibration split: evaluations by step, and the final adapters.

    python results/gemma/recipe_metrics.py --a v1=LOG_JSONL:CALIB_EVAL_DIR --b gemma=LOG_JSONL:CALIB_EVAL_DIR \
        [--boot 2000] [--output recipe_metrics.json] [--plot recipe_by_step.png]

LOG_JSONL is a ``guardcal train`` run's log.jsonl (its calib evaluations every ``--eval-steps``);
CALIB_EVAL_DIR is ``guardcal evaluate --dataset openai-moderation:calib --max-input-tokens 256`` of
the run's final adapter (the callback's setting), or that folder's predictions.jsonl alone (so
``recipe_runs/*_calib256_predictions.jsonl`` reproduce recipe_metrics.json). Reports both runs'
evaluations step by step, B minus A by a paired bootstrap over the 300 calibration rows, and the
average of the two logits (an ensemble of the two models) against A. Only the calibration split is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from compare_probes import calib_predictions, evaluated_scores, paired_bootstrap, summary

from guardcal.train.callbacks import read_evals

KEYS = ("accuracy", "auroc_unsafe", "ece", "recall_safe", "recall_unsafe")


def parse_run(spec: str) -> tuple[str, Path, Path]:
    name, _, paths = spec.partition("=")
    log, _, calib = paths.partition(":")
    if not (name and log and calib):
        raise SystemExit(f"{spec!r}: write NAME=LOG_JSONL:CALIB_EVAL_DIR")
    return name, Path(log), Path(calib)


def by_step(log: Path) -> dict[int, dict[str, float]]:
    return {int(e["step"]): {k: round(float(e[f"eval/{k}"]), 4) for k in KEYS} for e in read_evals(log)}


def calib_metrics(run: Path) -> dict:
    """guardcal's metrics of the calibration rows: the folder's metrics.json, or computed from predictions."""
    if run.is_dir():
        return json.loads((run / "metrics.json").read_text())["openai-moderation:calib"]
    from guardcal.calibrate.metrics import compute_metrics

    rows = calib_predictions(run)
    y = [r["label"] == "unsafe" for r in rows]
    pred = [r["pred"] == "unsafe" for r in rows]
    return compute_metrics(y, pred, [r["p_unsafe"] for r in rows], [r["confidence"] for r in rows])


def plot(steps: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    """Calib accuracy, AUROC and ECE of each run at each evaluation step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key in zip(axes, ("accuracy", "auroc_unsafe", "ece"), strict=True):
        for name, evals in steps.items():
            ax.plot(list(evals), [e[key] for e in evals.values()], marker="o", label=name)
        ax.set_title(f"calib {key.replace('_unsafe', '')} (300 rows)")
        ax.set_xlabel("training step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="NAME=LOG_JSONL:CALIB_EVAL_DIR, the reference run")
    ap.add_argument("--b", required=True, help="NAME=LOG_JSONL:CALIB_EVAL_DIR, the challenger")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--output", type=Path)
    ap.add_argument("--plot", type=Path, help="also draw the evaluations by step as a PNG")
    args = ap.parse_args()
    (na, log_a, cal_a), (nb, log_b, cal_b) = parse_run(args.a), parse_run(args.b)
    sa, y = evaluated_scores(cal_a)
    sb, yb = evaluated_scores(cal_b)
    assert (y == yb).all()
    ens = (sa + sb) / 2
    out = {
        "a": na,
        "b": nb,
        "evaluations_by_step": {na: by_step(log_a), nb: by_step(log_b)},
        "final_calib": {
            na: calib_metrics(cal_a),
            nb: calib_metrics(cal_b),
            f"mean logit of {na} and {nb}": summary(ens, y),
        },
        f"{nb}_minus_{na}": paired_bootstrap(sa, sb, y, args.boot),
        f"ensemble_minus_{na}": paired_bootstrap(sa, ens, y, args.boot),
        "score_correlation": float(np.corrcoef(sa, sb)[0, 1]),
    }
    text = json.dumps(out, indent=2)
    sys.stdout.write(text + "\n")
    if args.output:
        args.output.write_text(text + "\n")
    if args.plot:
        plot(out["evaluations_by_step"], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
