"""Would an out-of-distribution gate on the input alone fix the shipped guard's XSTest auto-decisions?

    python scripts/novelty_gate.py --output results/guard/novelty_gate   # ~2 min on 2 cores

The shipped guard auto-decides (allows) 41% of XSTest at 41% error: requests to an assistant are not
what it was trained and calibrated on. A cheap, backend-independent way to "know it does not know"
would escalate inputs that look unlike the training texts before the thresholds are consulted. This
measures one: each text as the mean of its tokens' input embeddings (the default model's embedding
matrix, whole text, no prompt), PCA to ``d`` dimensions fitted on the 500 training rows, the
Mahalanobis distance in that space, and a threshold at the ``q`` quantile of the calibration rows'
distances (so about ``1 - q`` of in-distribution traffic is escalated by the gate). Test and XSTest
are read once, with the shipped bundle's thresholds and the predictions in ``results/guard/eval``.
Nothing here is tuned on test or XSTest; every (d, q) on the grid is reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibration_run import rows_from_predictions
from guardcal.data.loaders import load_dataset
from guardcal.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
SETS = ("openai-moderation:train", "openai-moderation:calib", "openai-moderation:test", "xstest")
GRID_D = (16, 32, 64)
GRID_Q = (0.9, 0.95, 0.99)


def bag_of_embeddings(table: np.ndarray, tokenizer: Any, texts: list[str], name: str) -> np.ndarray:
    """Each text as the mean of its tokens' rows of the input embedding ``table``."""
    rows = []
    for text in tqdm(texts, desc=name, leave=False):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(table[ids].mean(0))
    return np.stack(rows)


def mahalanobis(train: np.ndarray, d: int) -> Any:
    """Distance in the top-``d`` principal components of ``train``, each scaled by its variance."""
    mu = train.mean(0)
    _, s, vt = np.linalg.svd(train - mu, full_matrices=False)
    w, var = vt[:d].T, s[:d] ** 2 / (len(train) - 1)
    return lambda x: (((x - mu) @ w) ** 2 / var).sum(1)


def read_split(name: str, flagged: np.ndarray, p: np.ndarray, y: np.ndarray, bundle: CalibrationBundle) -> dict:
    """Coverage and error of the auto-decisions with and without the gate."""
    calibrated = bundle.calibrator().predict(p)
    auto = bundle.get_thresholds().auto_mask(calibrated)
    wrong = (calibrated >= 0.5) != y
    gated = auto & ~flagged

    def err(mask: np.ndarray) -> float | None:
        return float(wrong[mask].mean()) if mask.any() else None

    return {"dataset": name, "flagged": float(flagged.mean()), "auto": float(auto.mean()),
            "auto_gated": float(gated.mean()), "error": err(auto), "error_gated": err(gated)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="results/guard/novelty_gate")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    model = load_model("default")
    data = {name: load_dataset(name, args.data_dir) for name in SETS}
    table = model.model.get_input_embeddings().weight.detach().float().numpy()
    feats = {
        name: bag_of_embeddings(table, model.tokenizer, [e.text for e in rows], name) for name, rows in data.items()
    }
    scored, _ = rows_from_predictions(ROOT / "results/guard/eval", list(SETS[2:]))
    preds = {(name, r["id"]): r["p_unsafe"] for name, rows in scored.items() for r in rows}
    bundle = CalibrationBundle.load(ROOT / "guardcal/assets/default_bundle.json")
    rows = []
    for d in GRID_D:
        distance = mahalanobis(feats[SETS[0]], d)
        calib = distance(feats[SETS[1]])
        for q in GRID_Q:
            cut = float(np.quantile(calib, q))
            for name in SETS[2:]:
                p = np.array([preds[(name, e.id)] for e in data[name]])
                y = np.array([e.label == "unsafe" for e in data[name]])
                rows.append({"d": d, "q": q, **read_split(name, distance(feats[name]) > cut, p, y, bundle)})
    write(Path(args.output), rows)


def write(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "novelty_gate.json").write_text(json.dumps(rows, indent=1) + "\n")

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = ["| d | q | set | flagged by the gate | auto-decided: bundle → with gate | error: bundle → with gate |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['d']} | {r['q']} | {r['dataset']} | {pct(r['flagged'])} | {pct(r['auto'])} → "
                     f"{pct(r['auto_gated'])} | {pct(r['error'])} → {pct(r['error_gated'])} |")  # fmt: skip
    (out / "novelty_gate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
