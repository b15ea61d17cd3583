"""Compare issue 21 candidates by the rule fixed before any test scoring.

    python scripts/compare_candidates.py --val runs/data-e/requests_val.jsonl \
        --run v2=results/guard/candidates/request-mix/sft-mix-d/log.jsonl:runs/eval-d-val-e \
        --run g=runs/sft-mix-g/log.jsonl:runs/eval-g-val-e --output compare.json

The rule: the highest mean of the calib AUROC (the training callback's last evaluation, in the run's
``log.jsonl``) and the held-out request AUROC (``guardcal evaluate`` on ``--val``), among the
candidates whose calib AUROC is at least 0.84. A candidate that was not trained (an average of
adapters, scripts/soup_adapters.py) has no log: give instead the folder of ``guardcal evaluate
--dataset openai-moderation:calib --max-input-tokens 256``, the callback's setting. It also reports
accuracy per request source, so a source the mean hides (the contrast requests) is seen.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_auc_score

from guardcal.train.callbacks import read_evals

CALIB_FLOOR = 0.84


def calib_reading(calib: Path) -> dict[str, float]:
    """Calib accuracy and AUROC: the last evaluation in a run's log.jsonl, or a ``guardcal evaluate`` folder."""
    if calib.is_dir():
        m = json.loads((calib / "metrics.json").read_text())["openai-moderation:calib"]
        return {"calib_accuracy": m["accuracy"], "calib_auroc": m["auroc_unsafe"]}
    evals = read_evals(calib)
    if not evals:
        raise SystemExit(f"{calib} has no calibration evaluation: give a run's log.jsonl or an evaluate folder")
    last = evals[-1]
    return {
        "calib_accuracy": last["eval/accuracy"],
        "calib_auroc": last["eval/auroc_unsafe"],
        "calib_recall_safe": last["eval/recall_safe"],
        "calib_recall_unsafe": last["eval/recall_unsafe"],
    }


def candidate(calib: Path, eval_dir: Path, source_of: dict[str, str]) -> dict[str, Any]:
    """One candidate's row of the table."""
    reading = calib_reading(calib)
    preds = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    by_source: dict[str, list[bool]] = collections.defaultdict(list)
    for p in preds:
        by_source[source_of[p["id"]]].append(p["pred"] == p["label"])

    def auroc(rows: list[dict[str, object]]) -> float:
        return float(roc_auc_score([r["label"] == "unsafe" for r in rows], [r["p_unsafe"] for r in rows]))

    val_auroc = auroc(preds)
    return {
        **reading,
        "requests_val_accuracy": sum(p["pred"] == p["label"] for p in preds) / len(preds),
        "requests_val_auroc": val_auroc,
        "requests_val_auroc_without_contrast": auroc([p for p in preds if source_of[p["id"]] != "contrast-guardcal"]),
        "rule_mean": (reading["calib_auroc"] + val_auroc) / 2,
        "calib_floor_met": reading["calib_auroc"] >= CALIB_FLOOR,
        "accuracy_by_source": {k: sum(v) / len(v) for k, v in sorted(by_source.items())},
    }


def plot(table: dict[str, dict[str, Any]], chosen: str | None, path: Path) -> None:
    """Each candidate at (calib AUROC, requests_val AUROC), the calib floor as a line, the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, row in table.items():
        x, y = row["calib_auroc"], row["requests_val_auroc"]
        ax.scatter([x], [y], color="tab:green" if name == chosen else "tab:blue", zorder=3)
        ax.annotate(name + (" (chosen)" if name == chosen else ""), (x, y), textcoords="offset points", xytext=(5, 4))
    ax.axvline(CALIB_FLOOR, color="tab:red", linestyle="--", label=f"calib floor {CALIB_FLOOR}")
    ax.set_xlabel("calib AUROC (OpenAI Moderation, 300 rows)")
    ax.set_ylabel("requests_val AUROC (held-out requests)")
    ax.set_title("Candidates under the rule: highest mean of the two AUROCs above the floor")
    ax.title.set_fontsize(9)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val", required=True, type=Path, help="the held-out requests (build_request_mix.py)")
    ap.add_argument(
        "--run", action="append", required=True, help="NAME=LOG_JSONL_OR_CALIB_EVAL_DIR:VAL_EVAL_DIR, repeatable"
    )
    ap.add_argument("--output", type=Path)
    ap.add_argument("--plot", type=Path, help="also draw the candidates as a PNG")
    args = ap.parse_args()
    source_of = {row["id"]: row["source"] for row in map(json.loads, args.val.read_text().splitlines())}
    table: dict[str, dict[str, Any]] = {}
    for spec in args.run:
        name, _, paths = spec.partition("=")
        calib, _, eval_dir = paths.partition(":")
        if not (name and calib and eval_dir):
            ap.error(f"--run {spec!r}: write NAME=LOG_JSONL:EVAL_DIR or NAME=CALIB_EVAL_DIR:EVAL_DIR")
        table[name] = candidate(Path(calib), Path(eval_dir), source_of)
    eligible = [name for name, row in table.items() if row["calib_floor_met"]]
    chosen = max(eligible, key=lambda name: table[name]["rule_mean"]) if eligible else None
    report = {"calib_floor": CALIB_FLOOR, "chosen": chosen, "candidates": table}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.plot:
        plot(table, chosen, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
