"""serve_bench's inputs and machine (benchmarks/serve_bench.py): the texts each concurrency level sends
(XSTest and OpenAI Moderation, each text once), the long inputs of the ``long`` level, and what the
machine is."""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Sequence
from typing import Any

try:
    from .serve_bench_config import CONCURRENCY, LONG_MIN_TOKENS, MAX_INPUT_CHARS
except ImportError:  # run as a script: python benchmarks/NAME.py
    from serve_bench_config import CONCURRENCY, LONG_MIN_TOKENS, MAX_INPUT_CHARS  # type: ignore[no-redef]


def level_inputs(texts: Sequence[str], sizes: dict[int, int]) -> dict[int, tuple[list[str], list[str]]]:
    """Each concurrency's (warm-up, timed) texts, in run order: no text is sent twice, so no cache
    anywhere sees a repeated prompt. The levels get different texts, hence different lengths:
    ``levels.c<N>`` in the result records each level's own FLOPs per request."""
    fresh = iter(texts)
    chosen = [c for c in CONCURRENCY if c in sizes]
    return {c: ([next(fresh) for _ in range(c)], [next(fresh) for _ in range(sizes[c])]) for c in chosen}


def long_inputs(
    rows: Sequence[str], count_tokens: Any, n: int, min_tokens: int = LONG_MIN_TOKENS, max_chars: int = MAX_INPUT_CHARS
) -> list[str]:
    """``n`` long inputs: consecutive ``rows`` joined by blank lines until one holds ``min_tokens`` tokens
    (``count_tokens(text)``); a row that would pass ``max_chars`` is skipped. Each row is used once."""
    out: list[str] = []
    fresh = iter(rows)
    while len(out) < n:
        text = ""
        while count_tokens(text) < min_tokens:
            row = next(fresh, None)
            if row is None:
                raise ValueError(
                    f"only {len(out)} long inputs of {min_tokens} tokens could be built; {n} were asked for"
                )
            joined = f"{text}\n\n{row}" if text else row
            if len(joined) <= max_chars:
                text = joined
        out.append(text)
    return out


def load_inputs(n: int, seed: int = 0, fits: Any = None, skipped: list[str] | None = None) -> list[str]:
    """``n`` texts alternating between XSTest and the OpenAI Moderation test split (seeded).

    With ``fits`` (``fits(text) -> bool``) only texts it accepts are drawn, in the same order; the
    others go to ``skipped``. The short levels pass "fits in one scoring window": an input over the
    1,024-token budget costs two or more whole windows (``core.windows``; before windowing it was cut
    to one), so one such input in a level measures the long-input path, which the ``long`` level
    measures on its own. Each such input is several short inputs' work (15 of the 880 OpenAI
    Moderation test rows; c4 and c16 drew one each, which made them 14% and 6% more prompt tokens).
    """
    from guardcal.data.loaders import load_dataset

    rng = random.Random(seed)
    pools = [load_dataset("xstest"), load_dataset("openai-moderation:test")]
    for pool in pools:
        rng.shuffle(pool)
    out: list[str] = []
    limit = 2 * (n + sum(len(pool) for pool in pools))
    for i in range(limit):
        if len(out) == n:
            break
        text = pools[i % 2][(i // 2) % len(pools[i % 2])].text
        if fits is None or fits(text):
            out.append(text)
        elif skipped is not None:
            skipped.append(text)
    if len(out) < n:
        raise ValueError(f"only {len(out)} inputs fit; {n} were asked for")
    return out


def machine_info() -> dict[str, Any]:
    import torch

    from guardcal.backends.precision import cpu_supports_bf16

    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
