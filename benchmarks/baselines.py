"""Cheap baselines a user could pick instead of a guard LLM, on guardcal's own split.

TF-IDF + logistic regression, trained on ``openai-moderation:train`` (500 rows)
and scored on ``openai-moderation:test`` and ``xstest`` with the same metrics
as ``guardcal evaluate`` (p_unsafe = the classifier's probability, confidence
= max(p, 1 - p)). Writes ``--output/metrics.json``.

    python benchmarks/baselines.py --data-dir ../shared/data --output results/baselines
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from guardcal.calibrate.metrics import compute_metrics
from guardcal.core.examples import UNSAFE
from guardcal.data.loaders import load_dataset

EVAL_SETS = ("openai-moderation:test", "xstest")


def tfidf_logreg():  # type: ignore[no-untyped-def]
    """The TF-IDF + logistic-regression yardstick every guard is compared with (unfitted pipeline)."""
    return make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2), LogisticRegression(C=4.0))


def predicted_logits(path: str | Path, ids: list[str], dataset: str | None = None) -> np.ndarray:
    """Logit of P(unsafe) for ``ids`` from a ``guardcal evaluate`` predictions.jsonl (rows of ``dataset``
    only when given: ids can repeat across datasets)."""
    rows = {}
    for r in map(json.loads, Path(path).read_text().splitlines()):
        if dataset is None or r.get("dataset") == dataset:
            rows[r["id"]] = r["p_unsafe"]
    q = np.clip(np.array([rows[i] for i in ids]), 1e-9, 1 - 1e-9)
    return np.asarray(np.log(q / (1 - q)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    train = load_dataset("openai-moderation:train", args.data_dir)
    clf = tfidf_logreg()
    clf.fit([e.text for e in train], [int(e.label == UNSAFE) for e in train])
    results = {}
    for key in EVAL_SETS:
        data = load_dataset(key, args.data_dir)
        p = clf.predict_proba([e.text for e in data])[:, 1]
        y = np.array([e.label == UNSAFE for e in data], dtype=np.int64)
        results[key] = compute_metrics(y, (p >= 0.5).astype(np.int64), p, np.maximum(p, 1 - p))
    out = {"tfidf-logreg": results}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
