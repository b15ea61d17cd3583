"""What a serve_bench run sends and measures (benchmarks/serve_bench.py): the concurrency levels, the
requests timed at each run size, the long-input level, the server flags and the backend variants."""

from __future__ import annotations

CONCURRENCY = (1, 4, 16, 64)
#: the matmul rates measured for the ceiling
DTYPES = ("float32", "bfloat16")
#: requests timed at each concurrency (after a short warm-up that is not counted)
REQUESTS = {
    "tiny": {1: 2, 4: 4, 16: 16, 64: 64},
    "quick": {1: 8, 4: 16, 16: 32, 64: 64},
    "full": {1: 48, 4: 96, 16: 192, 64: 256},
}
#: naive requests timed before the servers, and the same ones again after them
NAIVE_REQUESTS = {"tiny": 2, "quick": 6, "full": 24}
#: the long-input level: requests timed (after LONG_CONCURRENCY warm-up ones), their concurrency and length
LONG_REQUESTS = {"tiny": 2, "quick": 4, "full": 16}
LONG_CONCURRENCY = 4
LONG_MIN_TOKENS = 2000  # three 1,024-token windows at the default 128-token overlap
LONG_POOL = "openai-moderation:train"  # rows no short level sends
MAX_INPUT_CHARS = 20_000  # the server's default max_input_chars
LEVELS = (*(f"c{c}" for c in CONCURRENCY), "long")
#: server flags on top of the defaults: let all concurrent requests reach the backend's batcher
SERVER_FLAGS = ["--max-concurrency", "64", "--queue-size", "256", "--request-timeout-s", "600"]
SERVER_FLAGS += ["--limit-concurrency", "300"]  # uvicorn's connection limit must sit above the queue
#: what ``--backends`` can name: a backend, or the transformers backend with its forward torch.compile'd
VARIANTS = {
    "transformers": ["--backend", "transformers"],
    "transformers-compile": ["--backend", "transformers", "--compile"],
    "vllm": ["--backend", "vllm"],
}
