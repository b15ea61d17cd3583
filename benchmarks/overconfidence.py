"""The paper's Table 2: how often is a sampled rollout's decision token near-certain?

For a seeded sample of queries, draw ``--rollouts`` budget-forced reasoning
rollouts per query at temperature 1 (the same rollouts GRPO trains on) and
record the probability of each rollout's sampled decision token at the decision
position. Reports the share with p > 0.99 (overall and for rollouts whose
decision token is a label), with a histogram PNG beside the JSON.

    python benchmarks/overconfidence.py --n-queries 16 --rollouts 64 --output results/table2/base.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from guardcal.core.labels import LabelSpec
from guardcal.core.prompt import PromptTemplate
from guardcal.data.loaders import load_dataset
from guardcal.evaluate import subsample
from guardcal.models.loading import load_model
from guardcal.train.rollout import ForcedDecisionRollout

try:
    from .rollout_args import add_rollout_arguments
except ImportError:  # run as a script: python benchmarks/NAME.py
    from rollout_args import add_rollout_arguments  # type: ignore[no-redef]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_rollout_arguments(parser, n_queries=16)
    parser.add_argument("--rollouts", type=int, default=64, help="rollouts sampled per query (T = 1)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model, args.adapter)
    tok, template = loaded.tokenizer, PromptTemplate(mode="reasoning")
    spec = LabelSpec.from_tokenizer(tok)
    rollout = ForcedDecisionRollout(template, args.budget, temperature=1.0)
    queries = subsample(load_dataset(args.dataset, args.data_dir), args.n_queries)
    probs, is_label = [], []
    for i, ex in enumerate(queries):
        ids = tok.encode(ex.text, add_special_tokens=False)[: args.max_input_tokens]
        prompt = template.render(tok.decode(ids))
        with torch.no_grad():
            out = rollout.rollout([prompt] * args.rollouts, loaded.model, tok)
        probs += [float(np.exp(lp[-1])) for lp in out["logprobs"]]
        is_label += [spec.label_of(c[-1]) is not None for c in out["completion_ids"]]
        print(f"query {i + 1}/{len(queries)}: share p>0.99 so far {np.mean(np.array(probs) > 0.99):.3f}")
    p, lab = np.array(probs), np.array(is_label)
    result = {
        "model": args.model,
        "adapter": args.adapter,
        "dataset": args.dataset,
        "n_queries": len(queries),
        "rollouts_per_query": args.rollouts,
        "reasoning_budget": args.budget,
        "share_p_gt_0.99": float(np.mean(p > 0.99)),
        "share_p_gt_0.99_label_decisions": float(np.mean(p[lab] > 0.99)) if lab.any() else None,
        "share_label_decisions": float(lab.mean()),
        "mean_p": float(p.mean()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    _plot(p, args.output.with_suffix(".png"), result)
    print(json.dumps(result, indent=2))


def _plot(p: np.ndarray, path: Path, result: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(p, bins=40, range=(0, 1), color="#4C72B0")
    ax.axvline(0.99, color="#C44E52", linestyle="--", label=f"p > 0.99: {result['share_p_gt_0.99']:.1%}")
    ax.set(
        xlabel="probability of the sampled decision token",
        ylabel="rollouts",
        title=f"{result['model']}{' + ' + Path(result['adapter']).name if result['adapter'] else ''}: "
        f"{result['n_queries']} queries x {result['rollouts_per_query']} rollouts",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
