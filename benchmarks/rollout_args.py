"""Command-line flags shared by the rollout studies (Table 2 ``overconfidence.py``, Table 3 ``reasoning_swap.py``)."""

from __future__ import annotations

import argparse


def add_rollout_arguments(parser: argparse.ArgumentParser, n_queries: int) -> None:
    """The model, the queries, and how each reasoning rollout is cut and forced."""
    parser.add_argument("--model", default="default", help="'default' (embedded), a local folder or a HF id")
    parser.add_argument("--adapter", help="PEFT adapter folder, or 'default' (the shipped one)")
    parser.add_argument("--dataset", default="openai-moderation:test", help="where the queries come from")
    parser.add_argument("--data-dir", help="data root (default: $GUARDCAL_DATA_DIR)")
    parser.add_argument("--n-queries", type=int, default=n_queries, help="seeded sample of queries")
    parser.add_argument("--budget", type=int, default=16, help="reasoning tokens before the decision is forced")
    parser.add_argument("--max-input-tokens", type=int, default=128, help="queries are cut to this many tokens")
