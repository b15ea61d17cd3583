"""Compare issue 21 candidates by the rule fixed before any test scoring.

    python scripts/compare_candidates.py --val runs/data-e/requests_val.jsonl \
        --run v2=results/guard/candidates/request-mix/sft-mix-d/log.jsonl:runs/eval-d-val-e \
        --run g=runs/sft-mix-g/log.jsonl:runs/eval-g-val-e --output compare.json

The rule: the highest mean of the calib AUROC (the training callback's last evaluation, in the run's
``log.jsonl``) and the held-out request AUROC (``guardcal evaluate`` on ``--val``), among the
candidates whose calib AUROC is at least 0.84. It also reports accuracy per request source, so a
source the mean hides (the contrast requests) is seen.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from sklearn.metrics import roc_auc_score

CALIB_FLOOR = 0.84


def candidate(log: Path, eval_dir: Path, source_of: dict[str, str]) -> dict[str, object]:
    last = [row for row in map(json.loads, log.read_text().splitlines()) if "eval/auroc_unsafe" in row][-1]
    preds = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    by_source: dict[str, list[bool]] = collections.defaultdict(list)
    for p in preds:
        by_source[source_of[p["id"]]].append(p["pred"] == p["label"])

    def auroc(rows: list[dict[str, object]]) -> float:
        return float(roc_auc_score([r["label"] == "unsafe" for r in rows], [r["p_unsafe"] for r in rows]))

    val_auroc = auroc(preds)
    return {
        "calib_accuracy": last["eval/accuracy"],
        "calib_auroc": last["eval/auroc_unsafe"],
        "calib_recall_safe": last["eval/recall_safe"],
        "calib_recall_unsafe": last["eval/recall_unsafe"],
        "requests_val_accuracy": sum(p["pred"] == p["label"] for p in preds) / len(preds),
        "requests_val_auroc": val_auroc,
        "requests_val_auroc_without_contrast": auroc([p for p in preds if source_of[p["id"]] != "contrast-guardcal"]),
        "rule_mean": (last["eval/auroc_unsafe"] + val_auroc) / 2,
        "calib_floor_met": last["eval/auroc_unsafe"] >= CALIB_FLOOR,
        "accuracy_by_source": {k: sum(v) / len(v) for k, v in sorted(by_source.items())},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val", required=True, type=Path, help="the held-out requests (build_request_mix.py)")
    ap.add_argument("--run", action="append", required=True, help="NAME=LOG_JSONL:EVAL_DIR, repeatable")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    source_of = {row["id"]: row["source"] for row in map(json.loads, args.val.read_text().splitlines())}
    table = {}
    for spec in args.run:
        name, _, paths = spec.partition("=")
        log, _, eval_dir = paths.partition(":")
        if not (name and log and eval_dir):
            ap.error(f"--run {spec!r}: write NAME=LOG_JSONL:EVAL_DIR")
        table[name] = candidate(Path(log), Path(eval_dir), source_of)
    eligible = {k: v for k, v in table.items() if v["calib_floor_met"]}
    chosen = max(eligible, key=lambda k: float(eligible[k]["rule_mean"])) if eligible else None  # type: ignore[arg-type]
    report = {"calib_floor": CALIB_FLOOR, "chosen": chosen, "candidates": table}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
