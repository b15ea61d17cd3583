"""What does a pooled head cost in the vllm backend against its decision token? Same texts, same run.

    python benchmarks/vllm_head_speed.py --head DIR [--rows 96] [--dtype auto] [--kv-cache-bytes 268435456]
        [--output results/guard/candidates/paired-head/vllm_head_speed.json]

``--head`` is an adapter folder with a pooled head (and the LoRA it reads, if any). Scores the same
calibration texts with the vllm backend two ways: the decision token of the folder's LoRA (a
generating engine, prefix cache on, ``max_tokens=1``) and the head (a pooling engine returning the
head's layers per token, ``backends/vllm_readout``, prefix cache off). Each way scores the texts as
one batch (all submitted together, as concurrent requests arrive) and one at a time, once to warm
up and then ``--repeats`` times; the best time counts. Prints texts per second and each reading's
time as a ratio of the decision token's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path


async def timed(backend, texts: list[str], repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Best wall time of scoring ``texts`` as one batch and one at a time (after a warm-up of each)."""
    await backend.score(texts[:4])
    best = {"batch": float("inf"), "one_at_a_time": float("inf")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        await backend.score(texts)
        best["batch"] = min(best["batch"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for text in texts:
            await backend.score([text])
        best["one_at_a_time"] = min(best["one_at_a_time"], time.perf_counter() - t0)
    return best


async def measure(adapter: str | None, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    from guardcal.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(adapter=adapter, dtype=args.dtype, kv_cache_bytes=args.kv_cache_bytes)
    await backend.start()
    try:
        return await timed(backend, texts, args.repeats)
    finally:
        await backend.aclose()


def main() -> int:
    from guardcal.core.pooled_head import FILENAME
    from guardcal.data.loaders import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", required=True, type=Path, help="an adapter folder holding pooled_head.safetensors")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--kv-cache-bytes", type=int, default=256 << 20)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    if not (args.head / FILENAME).is_file():
        ap.error(f"--head {args.head} holds no {FILENAME}")
    texts = [e.text for e in load_dataset("openai-moderation:calib")][: args.rows]
    with tempfile.TemporaryDirectory() as tmp:  # the same folder without its head: the decision token
        lora = Path(tmp) / "lora"
        shutil.copytree(args.head, lora)
        (lora / FILENAME).unlink()
        has_lora = (lora / "adapter_config.json").is_file()
        token = asyncio.run(measure(str(lora) if has_lora else None, texts, args))
    head = asyncio.run(measure(str(args.head), texts, args))
    result = {"rows": len(texts), "dtype": args.dtype, "repeats": args.repeats, "seconds": {}, "ratio": {}}
    for way in ("batch", "one_at_a_time"):
        result["seconds"][way] = {"decision_token": round(token[way], 3), "head": round(head[way], 3)}
        result["ratio"][way] = round(head[way] / token[way], 3)
        print(
            f"{way:14s} decision token {len(texts) / token[way]:6.1f} texts/s   head {len(texts) / head[way]:6.1f} "
            f"texts/s   head / token = {head[way] / token[way]:.2f}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
