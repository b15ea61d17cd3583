"""Cheaper forwards that were tried for the serving backend, against the one it runs, in process.

The server's scorer (the default model, the cached instruction prefix, 16 inputs a forward as at
16 concurrent requests) scores the same XSTest + OpenAI Moderation inputs with each variant,
interleaved over ``--repeats`` rounds so that machine drift hits them alike:

- ``served``: what ``guardcal serve`` runs (``--dtype auto``: bf16 where the CPU has it, else fp32;
  the requests packed end to end in one row, ``scoring.packed``);
- ``padded``: the same, left-padded to one width per forward and split by length (before packing);
- ``eager-attention``: padded, with transformers' eager attention instead of SDPA;
- ``int8-dynamic``: float32 with PyTorch's dynamic int8 quantisation of every Linear.

For each: req/s per round, the ratio to ``served`` in the same round, the largest and mean change
of P(unsafe) against ``served`` and the share of labels (P(unsafe) > 0.5) that flip, and whether
the prefix cache passed its self-check (a variant that fails it runs the full prompt).

    python benchmarks/forward_variants.py --output benchmarks/results/forward_variants.json   # ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

#: inputs per forward, as at 16 concurrent requests (the server's max batch)
BATCH = 16


def _scorers(texts: list[str]) -> dict[str, Any]:
    import torch

    from guardcal.backends.precision import resolve_dtype
    from guardcal.models.loading import load_model
    from guardcal.scoring.scorer import HFScorer

    served = load_model("default", dtype=resolve_dtype("auto"))
    padded = load_model("default", dtype=resolve_dtype("auto"))
    eager = load_model("default", dtype=resolve_dtype("auto"))
    eager.model.set_attn_implementation("eager")
    fp32 = load_model("default", dtype="float32")
    int8 = torch.ao.quantization.quantize_dynamic(fp32.model, {torch.nn.Linear}, dtype=torch.qint8)
    models = {"served": served.model, "padded": padded.model, "eager-attention": eager.model, "int8-dynamic": int8}
    scorers = {
        name: HFScorer(model, served.tokenizer, prefix_cache=True, batch_size=BATCH, packing=name == "served")
        for name, model in models.items()
    }
    for scorer in scorers.values():
        scorer.score(texts[:BATCH])  # warm-up and the prefix cache's self-check, not timed
    return scorers


def _time_rounds(
    scorers: dict[str, Any], timed: list[str], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Each variant's req/s per round over ``timed`` (``BATCH`` a forward, variants interleaved), and its
    P(unsafe) per input from the last round."""
    import numpy as np

    rps: dict[str, list[float]] = {name: [] for name in scorers}
    p_unsafe: dict[str, Any] = {}
    for round_ in range(repeats):
        for name, scorer in scorers.items():
            started = time.perf_counter()
            parts = [scorer.score(timed[i : i + BATCH]).scores.p_unsafe for i in range(0, len(timed), BATCH)]
            rps[name].append(len(timed) / (time.perf_counter() - started))
            p_unsafe[name] = np.concatenate(parts)
            print(f"round {round_ + 1} {name}: {rps[name][-1]:.2f} req/s", flush=True)
    return rps, p_unsafe


def _compare(scorers: dict[str, Any], rps: dict[str, list[float]], p_unsafe: dict[str, Any]) -> dict[str, Any]:
    """Each variant against ``served``: req/s ratios per round, P(unsafe) changes, label flips, prefix cache."""
    import numpy as np

    ref = p_unsafe["served"]
    variants = {}
    for name, scorer in scorers.items():
        delta = np.abs(p_unsafe[name] - ref)
        variants[name] = {
            "rps": rps[name],
            "ratio_to_served": [a / b for a, b in zip(rps[name], rps["served"], strict=True)],
            "max_abs_delta_p_unsafe": float(delta.max()),
            "mean_abs_delta_p_unsafe": float(delta.mean()),
            "label_flips": float(np.mean((p_unsafe[name] > 0.5) != (ref > 0.5))),
            "prefix_cache": scorer.prefix_status,
        }
        print(f"{name}: {json.dumps(variants[name])}", flush=True)
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--forwards", type=int, default=6, help="timed forwards of 16 inputs per round")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, variants interleaved")
    args = parser.parse_args()

    import torch

    try:
        from .serve_bench import load_inputs, machine_info
    except ImportError:  # run as a script
        from serve_bench import load_inputs, machine_info  # type: ignore[no-redef]

    texts = load_inputs(BATCH * (args.forwards + 1))
    scorers = _scorers(texts)
    timed = texts[BATCH:]
    rps, p_unsafe = _time_rounds(scorers, timed, args.repeats)
    variants = _compare(scorers, rps, p_unsafe)
    result = {
        "machine": machine_info(),
        "served_dtype": str(next(scorers["served"].model.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "loadavg_end": list(os.getloadavg()),
        "inputs": len(timed),
        "batch": BATCH,
        "variants": variants,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
