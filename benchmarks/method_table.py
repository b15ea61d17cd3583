"""The paper's Table 4 on guardcal's own runs: accuracy and ECE per method and dataset, plus a plot.

Reads ``results/<run>/metrics.json`` (written by ``guardcal evaluate``) for each run and writes
``methods.json``, ``methods.md`` (accuracy / ECE / Brier / selective AUROC / share of
predictions with confidence > 0.99, per dataset, with the paper's Qwen3-1.7B numbers beside
them) and ``methods.png`` (accuracy vs ECE, one point per method and dataset). With
``--table2 DIR``, a last column gives the paper's Table 2 after training: the share of T = 1
reasoning rollouts whose decision token has p > 0.99 (``DIR/<run>.json`` from
``overconfidence.py``; a run evaluated without an adapter reads ``DIR/base.json``).

    python benchmarks/method_table.py --runs results/base-direct results/sft results/grpo results/cal-grpo \\
        --table2 results/table2 --output results/methods
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DATASETS = ("openai-moderation:test", "xstest")
#: arXiv 2601.13284, Qwen3-1.7B (ECE %, equal-mass bins): GRPO and calibration-aware GRPO ("ours");
#: accuracy on OpenAI Moderation ~88-89% for both (the paper's XSTest accuracy is not reproduced here)
PAPER_QWEN3_1_7B = {
    "grpo": {"openai-moderation:test": {"accuracy": "~88-89%", "ece": 12.20}, "xstest": {"ece": 20.22}},
    "cal-grpo": {"openai-moderation:test": {"accuracy": "~88-89%", "ece": 8.67}, "xstest": {"ece": 15.48}},
}
KEYS = ("accuracy", "ece", "brier", "auroc", "overconfident_ratio")


def load(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    missing = [d for d in DATASETS if d not in metrics]
    if missing:
        raise SystemExit(f"{run}/metrics.json has no {missing}; evaluate the run on {list(DATASETS)}")
    return {d: {k: metrics[d][k] for k in KEYS} for d in DATASETS}


def table2_share(run: Path, table2: Path | None) -> float | None:
    """The run's Table 2 share of rollouts with p > 0.99, or None when it was not measured."""
    if table2 is None:
        return None
    record = run / "run.json"
    adapter = json.loads(record.read_text()).get("adapter") if record.is_file() else run.name
    path = table2 / f"{run.name if adapter else 'base'}.json"
    return float(json.loads(path.read_text())["share_p_gt_0.99"]) if path.is_file() else None


def _cell(m: dict[str, Any]) -> str:
    auroc = "–" if m["auroc"] is None else f"{m['auroc']:.2f}"
    return (
        f"{100 * m['accuracy']:.1f}% / {100 * m['ece']:.1f}% / {m['brier']:.3f} / {auroc} / "
        f"{100 * m['overconfident_ratio']:.0f}%"
    )


def _paper(name: str) -> str:
    ref = PAPER_QWEN3_1_7B.get(name)
    if ref is None:
        return "–"
    o, x = ref["openai-moderation:test"], ref["xstest"]
    return f"{o['accuracy']} / {o['ece']:.2f}% · XSTest ECE {x['ece']:.2f}%"


def markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| run | OpenAI test: acc / ECE / Brier / AUROC / conf>0.99 | XSTest: same "
        "| Table 2: rollouts p > 0.99 | paper, Qwen3-1.7B: OpenAI acc / ECE |",
        "|---|---|---|---|---|",
    ]
    for name, m in table.items():
        share = m.get("table2_share_p_gt_0.99")
        t2 = "–" if share is None else f"{100 * share:.1f}%"
        lines.append(f"| {name} | {_cell(m[DATASETS[0]])} | {_cell(m[DATASETS[1]])} | {t2} | {_paper(name)} |")
    return "\n".join(lines) + "\n"


def nearby_groups(points: dict[str, tuple[float, float]], radius: float = 0.8) -> list[tuple[list[str], tuple]]:
    """Names whose points lie within ``radius`` (plot units) of a group's first point, with that point."""
    groups: list[tuple[list[str], tuple]] = []
    for name, (x, y) in points.items():
        home = next((g for g in groups if abs(g[1][0] - x) <= radius and abs(g[1][1] - y) <= radius), None)
        if home is None:
            groups.append(([name], (x, y)))
        else:
            home[0].append(name)
    return groups


def plot(table: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for marker, dataset in zip(("o", "s"), DATASETS, strict=True):
        points = {name: (100 * m[dataset]["ece"], 100 * m[dataset]["accuracy"]) for name, m in table.items()}
        for i, (name, (x, y)) in enumerate(points.items()):
            ax.scatter(x, y, marker=marker, color=f"C{i}", s=60, alpha=0.8, label=name if marker == "o" else None)
        groups = nearby_groups(points)  # one label for points that sit on each other
        for names, (x, y) in groups:
            # a label that would run into the next group to its right goes on the left
            crowded = any(0 < gx - x < 5 and abs(gy - y) < 2 for _, (gx, gy) in groups)
            ax.annotate(
                "\n".join(names),
                (x, y),
                textcoords="offset points",
                xytext=(-5, 4) if crowded else (5, 4),
                ha="right" if crowded else "left",
                fontsize=8,
            )
    ax.set_xlabel("ECE, % (15 equal-mass bins; lower is better)")
    ax.set_ylabel("accuracy, %")
    ax.set_title("Accuracy vs calibration per method (● OpenAI Moderation test, ■ XSTest)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="results/<run> folders")
    parser.add_argument("--table2", type=Path, help="folder of overconfidence.py results: <run>.json, base.json")
    parser.add_argument("--output", type=Path, required=True, help="folder for methods.{json,md,png}")
    args = parser.parse_args()
    table: dict[str, dict[str, Any]] = {}
    for run in args.runs:
        table[run.name] = {**load(run), "table2_share_p_gt_0.99": table2_share(run, args.table2)}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "methods.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.output / "methods.md").write_text(markdown(table))
    plot(table, args.output / "methods.png")
    print(markdown(table))


if __name__ == "__main__":
    main()
