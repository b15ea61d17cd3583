"""The paper's Table 5 on guardcal's own runs: ECE with no post-hoc, isotonic and Platt (and temperature).

For each ``results/<run>`` folder written by ``guardcal evaluate`` with the calib,
test and XSTest sets, fit each post-hoc method on ``openai-moderation:calib`` and
evaluate on the other two (via ``guardcal calibrate --predictions``). Writes one
bundle per run and method, ``table5.json`` and ``table5.md``.

    python benchmarks/posthoc_table.py --runs results/base-direct results/sft --output results/posthoc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guardcal.calibration_run import CalibrateConfig, run_calibration

EVAL = ("openai-moderation:test", "xstest")
METHODS = ("isotonic", "platt", "temperature")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for run in args.runs:
        rows: dict[str, dict[str, dict[str, float]]] = {}
        for method in METHODS:
            out = args.output / f"{run.name}-{method}.json"
            bundle = run_calibration(CalibrateConfig(output=out, method=method, predictions=run, progress=False))
            rows.setdefault("none", {k: _pick(bundle.metrics["before"][k]) for k in EVAL})
            rows[method] = {k: _pick(bundle.metrics["after"][k]) for k in EVAL}
        table[run.name] = rows
    (args.output / "table5.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.output / "table5.md").write_text(markdown(table))
    print(markdown(table))


def _pick(m: dict) -> dict[str, float]:
    return {k: m[k] for k in ("accuracy", "ece", "brier", "auroc_unsafe")}


def markdown(table: dict) -> str:
    lines = ["| run | post-hoc | OpenAI test acc / ECE / Brier | XSTest acc / ECE / Brier |", "|---|---|---|---|"]
    for run, rows in table.items():
        for method, per in rows.items():
            cells = [
                f"{100 * per[k]['accuracy']:.1f}% / {100 * per[k]['ece']:.1f}% / {per[k]['brier']:.3f}" for k in EVAL
            ]
            lines.append(f"| {run} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
