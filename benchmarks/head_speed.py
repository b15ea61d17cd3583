"""How much does reading a pooled head cost against the decision token? Same texts, same run (issue 21).

    python benchmarks/head_speed.py --head results/guard/candidates/pooled-head/head [--rows 96] [--dtype auto]
        [--output results/guard/candidates/pooled-head/head_speed.json]

Scores the same calibration texts three ways with the shipped adapter's LoRA: the decision token as the
transformers backend serves it (instruction prefix cached, requests packed, forwards of 16), the
pooled head as the scorer reads it (one prompt per forward), and the head's features in right-padded
forwards of 16 prompts sorted by length (``scoring.pooled.pooled_features``).
Each way runs once to warm up, then ``--repeats`` times; the best time counts. Prints texts per second
and each way's time as a ratio of the decision token's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def timed(scorer, texts: list[str], repeats: int) -> float:  # type: ignore[no-untyped-def]
    """The best of ``repeats`` wall times of scoring ``texts``, after one warm-up."""
    scorer.score(texts[:4])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score(texts)
        best = min(best, time.perf_counter() - t0)
    return best


class Padded:
    """The head's features in right-padded forwards of ``batch`` length-sorted prompts (no scorer)."""

    def __init__(self, scorer, batch: int) -> None:  # type: ignore[no-untyped-def]
        self.scorer, self.batch = scorer, batch

    def score(self, texts: list[str]) -> None:
        from guardcal.core.pooled_head import input_span
        from guardcal.scoring.pooled import pooled_features

        s = self.scorer
        spans = sorted((input_span(s.template, s.tokenizer, t) for t in texts), key=lambda x: -len(x[0]))
        for i in range(0, len(spans), self.batch):
            pooled_features(s.model, spans[i : i + self.batch], s.head.readouts, s.pad_id())


def main() -> int:
    from guardcal.backends.precision import resolve_dtype
    from guardcal.core.pooled_head import FILENAME
    from guardcal.core.prompt import PromptTemplate
    from guardcal.data.loaders import load_dataset
    from guardcal.models.loading import check_adapter_dir, load_model
    from guardcal.scoring.scorer import HFScorer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", type=Path, required=True, help="a folder holding pooled_head.safetensors")
    ap.add_argument("--adapter", default="default", help="the LoRA the head reads (default: the shipped one)")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    dtype = resolve_dtype(args.dtype)
    texts = [e.text for e in load_dataset("openai-moderation:calib")[: args.rows]]
    with tempfile.TemporaryDirectory() as folder:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(check_adapter_dir(args.adapter) / name, Path(folder) / name)
        shutil.copyfile(args.head / FILENAME, Path(folder) / FILENAME)
        loaded = load_model("default", folder, dtype=dtype)
    model, tok, template = loaded.model, loaded.tokenizer, PromptTemplate()
    head = HFScorer(model, tok, template, head=loaded.head)
    ways = {
        "decision token (served: prefix cache, packed, 16)": HFScorer(
            model, tok, template, batch_size=16, prefix_cache=True
        ),
        "pooled head, one prompt per forward (the scorer)": head,
        "pooled head features, padded forwards of 16": Padded(head, 16),
    }
    seconds = {name: timed(scorer, texts, args.repeats) for name, scorer in ways.items()}
    base = next(iter(seconds.values()))
    result = {"rows": len(texts), "dtype": dtype, "repeats": args.repeats, "ways": {}}
    for name, s in seconds.items():
        result["ways"][name] = {
            "seconds": round(s, 2),
            "texts_per_s": round(len(texts) / s, 2),
            "ratio": round(s / base, 2),
        }
        print(f"{name:52s} {s:7.2f} s  {len(texts) / s:6.2f} texts/s  x{s / base:.2f} of the decision token")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
