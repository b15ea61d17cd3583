"""Would escalating where the head and the decision token disagree cut v5's XSTest errors? (issue 21)

Reads two committed prediction files of the same rows and their bundles: v5's pooled head
(``results/guard/eval``, the shipped bundle) and the decision token of the same LoRA
(``results/guard/candidates/v4-shipped/eval``, v4's bundle). The gate auto-decides where the
head's thresholds pass and the two calibrated labels agree. The rule it was scored against is in
``results/guard/candidates/agreement-gate/README.md``.

    python benchmarks/agreement_gate.py --out results/guard/candidates/agreement-gate/scored_once.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

HEAD = ("results/guard/eval/predictions.jsonl", "guardcal/assets/default_bundle.json")
V4 = "results/guard/candidates/v4-shipped"
TOKEN = (f"{V4}/eval/predictions.jsonl", f"{V4}/bundle.json")


def calibrated(predictions: str, bundle: str) -> dict[str, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """Per dataset: ids, labels (True = unsafe), calibrated P(unsafe), and the bundle's auto mask."""
    from guardcal.calibrate.bundle import CalibrationBundle

    loaded = CalibrationBundle.load(bundle)
    rows = [json.loads(line) for line in Path(predictions).read_text().splitlines()]
    out = {}
    for ds in sorted({r["dataset"] for r in rows}):
        part = [r for r in rows if r["dataset"] == ds]
        p = loaded.calibrator().predict(np.array([r["p_unsafe"] for r in part]))
        y = np.array([r["label"] == "unsafe" for r in part])
        out[ds] = ([r["id"] for r in part], y, p, loaded.get_thresholds().auto_mask(p))
    return out


def decisions(y: np.ndarray, p: np.ndarray, auto: np.ndarray, agree: np.ndarray) -> dict[str, Any]:
    """Coverage, error and the allow/block split of one auto mask."""
    pred = p >= 0.5
    return {
        "n": len(y),
        "auto_decided": float(auto.mean()),
        "error": float(np.mean(pred[auto] != y[auto])) if auto.any() else None,
        "allowed": float(np.mean(auto & ~pred)),
        "unsafe_among_allowed": int(np.sum(auto & ~pred & y)),
        "blocked": float(np.mean(auto & pred)),
        "safe_among_blocked": int(np.sum(auto & pred & ~y)),
        "disagree": float(np.mean(~agree)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    head, token = calibrated(*HEAD), calibrated(*TOKEN)
    result: dict[str, dict[str, Any]] = {}
    for ds, (ids, y, p, auto) in head.items():
        token_ids, token_y, token_p, _ = token[ds]
        if token_ids != ids or not (token_y == y).all():
            raise SystemExit(f"{ds}: the two prediction files do not hold the same rows in the same order")
        agree = (p >= 0.5) == (token_p >= 0.5)
        result[ds] = {"v5": decisions(y, p, auto, agree), "v5 with the gate": decisions(y, p, auto & agree, agree)}
        print(ds, json.dumps(result[ds]))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
