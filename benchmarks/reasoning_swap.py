"""The paper's Table 3: is the decision token an extraction step? The reasoning-swap test.

For a seeded sample of queries, draw one budget-forced reasoning rollout per
query at temperature 1 (the rollouts GRPO trains on) and read its decision
greedily: the label whose decision token is more probable at the forced
decision position. Then, for every query, replace its reasoning with the
reasoning of another query whose decision was the *opposite* label, keep the
query, and read the decision greedily again. If the decision token only
extracts what the reasoning already says, most decisions flip to the donor's
label, and the flipped ones are as confident as the originals. As a control,
the same swap with a donor of the *same* label shows how often any change of
reasoning flips a decision.

    python benchmarks/reasoning_swap.py --n-queries 128 --output results/table3/base.json
    python benchmarks/reasoning_swap.py --adapter runs/grpo --output results/table3/grpo.json
    python benchmarks/reasoning_swap.py --combine results/table3/base.json results/table3/grpo.json \\
        --output results/table3

A model that always decides the same label (the 20-step GRPO adapter says "Safe" on every
rollout) has no opposite-label reasoning of its own. ``--donor-adapter`` then draws the donor
pool from another model (``none``: the base model without an adapter): donors are that model's
rollouts, labelled by that model's own decision, and the model under test reads its own
rollouts and the swapped ones as before.

    python benchmarks/reasoning_swap.py --adapter runs/grpo --donor-adapter none \\
        --output results/table3/grpo-base-donors.json

``--combine`` writes ``table3.md`` and ``table3.png`` (flip rate per model and donor kind, and
the confidence of flipped vs kept decisions) from runs already written.

Confidence is the decided label's probability renormalised over the two
labels (what ``guardcal evaluate`` scores); the JSON also keeps the
full-vocabulary probability.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from guardcal.core.confidence import Scores, from_logits
from guardcal.core.examples import SAFE, UNSAFE
from guardcal.core.labels import LabelSpec
from guardcal.core.prompt import PromptTemplate
from guardcal.data.loaders import load_dataset
from guardcal.evaluate import subsample
from guardcal.models.loading import load_model
from guardcal.train.rollout import ForcedDecisionRollout, last_position_logits

try:
    from .rollout_args import add_rollout_arguments
except ImportError:  # run as a script: python benchmarks/NAME.py
    from rollout_args import add_rollout_arguments  # type: ignore[no-redef]


def main() -> None:
    args = _parse_args()
    if args.combine:
        _combine(args.combine, args.output)
        return
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    loaded = load_model(args.model, args.adapter)
    model, tok, template = loaded.model, loaded.tokenizer, PromptTemplate(mode="reasoning")
    model.eval()
    spec = LabelSpec.from_tokenizer(tok)
    rollout = ForcedDecisionRollout(template, args.budget, temperature=1.0, label_ids=spec.token_ids)
    suffix = tok.encode(template.decision_suffix(), add_special_tokens=False)
    queries, rendered, prompts = _queries(args, tok, template)
    k = max(1, args.donor_rollouts)
    owner = np.repeat(np.arange(len(prompts)), k)  # rollout r belongs to query owner[r]
    donor_model = _donor_model(args, model)
    reasonings, pool = _rollouts(
        rollout, donor_model, tok, spec, [rendered[i] for i in owner], args.batch, "donor pool"
    )
    pool_labels = np.array(pool.pred)
    if donor_model is model:  # query i's own rollout is the first of its pool rollouts
        own = np.arange(len(prompts)) * k
        original = Scores(pool.p_safe[own], pool.p_unsafe[own])
    else:
        original = _rollouts(rollout, model, tok, spec, rendered, args.batch, "own rollouts")[1]
    labels = np.array(original.pred)

    result: dict[str, Any] = {
        "model": args.model,
        "adapter": args.adapter,
        "dataset": args.dataset,
        "n_queries": len(queries),
        "reasoning_budget": args.budget,
        "seed": args.seed,
        "donor_rollouts_per_query": k,
        "donor_adapter": args.donor_adapter,
        "donor_pool_share_unsafe": float(np.mean(pool_labels == UNSAFE)),
        "original": _original_stats(original, labels, queries),
    }
    for kind, want_opposite in (("opposite_label_donor", True), ("same_label_donor", False)):
        donors = _donors(labels, pool_labels, owner, want_opposite, rng)
        keep = donors >= 0
        swapped_seqs = [prompts[i] + reasonings[donors[i]] + suffix for i in np.flatnonzero(keep)]
        result[kind] = _swap_stats(_read(model, tok, spec, swapped_seqs, args.batch), labels, keep)
        print(f"{kind}: {result[kind]['n']} swaps, flip rate {result[kind]['flip_rate']}")
    _write(result, args.output)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_rollout_arguments(parser, n_queries=128)
    parser.add_argument(
        "--donor-rollouts",
        type=int,
        default=4,
        help="rollouts per query drawn for the donor pool (the first is the query's own)",
    )
    parser.add_argument(
        "--donor-adapter",
        help="draw the donor pool from this adapter on --model instead ('none': the bare model); "
        "default: the model under test",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--combine", nargs="+", type=Path, help="JSON files of earlier runs: write table3.md/png")
    parser.add_argument("--output", type=Path, required=True, help="JSON file (a run) or folder (--combine)")
    return parser.parse_args()


def _combine(paths: list[Path], output: Path) -> None:
    """``--combine``: table3.md and table3.png in ``output`` from the runs already written to ``paths``."""
    runs = {path.stem: json.loads(path.read_text()) for path in paths}
    output.mkdir(parents=True, exist_ok=True)
    (output / "table3.md").write_text(markdown(runs))
    plot(runs, output / "table3.png")
    print(markdown(runs))


def _queries(
    args: argparse.Namespace, tok: Any, template: PromptTemplate
) -> tuple[list[Any], list[str], list[list[int]]]:
    """The seeded sample of queries, their rendered prompts and those prompts' token ids."""
    queries = subsample(load_dataset(args.dataset, args.data_dir), args.n_queries, seed=args.seed)
    texts = [tok.decode(tok.encode(ex.text, add_special_tokens=False)[: args.max_input_tokens]) for ex in queries]
    rendered = [template.render(text) for text in texts]
    prompts = [tok.encode(p, add_special_tokens=False) for p in rendered]  # as the rollout encodes them
    return queries, rendered, prompts


def _donor_model(args: argparse.Namespace, model: Any) -> Any:
    """The model that draws the donor pool: ``model`` itself, or ``--donor-adapter`` on ``--model``."""
    if args.donor_adapter is None:
        return model
    adapter = None if args.donor_adapter.lower() == "none" else args.donor_adapter
    return load_model(args.model, adapter).model.eval()


def _original_stats(original: Scores, labels: np.ndarray, queries: list[Any]) -> dict[str, Any]:
    """The decisions read after each query's own reasoning: share unsafe, accuracy and confidence."""
    return {
        "share_unsafe": float(np.mean(labels == UNSAFE)),
        "accuracy": float(np.mean(labels == np.array([ex.label for ex in queries]))),
        **_confidence_stats(original, np.ones(len(labels), dtype=bool)),
    }


def _swap_stats(swapped: Scores, labels: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    """The decisions read after a donor's reasoning (for the queries in ``keep``) against the original
    ``labels``: how many, how often they flip, and the confidence of flipped and kept decisions."""
    flipped = np.array(swapped.pred) != labels[keep]
    return {
        "n": int(keep.sum()),
        "flip_rate": float(flipped.mean()) if keep.any() else None,
        "flipped": _confidence_stats(swapped, flipped),
        "kept": _confidence_stats(swapped, ~flipped),
    }


def _write(result: dict[str, Any], output: Path) -> None:
    """``result`` as JSON in ``output``, and printed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _rollouts(
    rollout: ForcedDecisionRollout, model: Any, tok: Any, spec: LabelSpec, prompts: list[str], batch: int, desc: str
) -> tuple[list[list[int]], Scores]:
    """Each prompt's reasoning tokens, and its decision read greedily (T = 1 readings the rollout recorded)."""
    n_suffix = len(tok.encode(rollout.template.decision_suffix(), add_special_tokens=False))
    reasonings: list[list[int]] = []
    label_lp: list[list[float]] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch), desc=desc, unit="batch"):
            out = rollout.rollout(prompts[start : start + batch], model, tok)
            reasonings += [c[: len(c) - n_suffix - 1] for c in out["completion_ids"]]
            label_lp += out["decision_label_logprobs"]
    p = np.exp(np.array(label_lp, dtype=np.float64))
    return reasonings, Scores(p[:, spec.labels.index(SAFE)], p[:, spec.labels.index(UNSAFE)])


def _read(model: Any, tok: Any, spec: LabelSpec, seqs: list[list[int]], batch: int) -> Scores:
    parts = []
    with torch.no_grad():
        for start in range(0, len(seqs), batch):
            logits = last_position_logits(seqs[start : start + batch], model, tok.pad_token_id)
            parts.append(from_logits(logits.double().cpu().numpy(), spec))
    return Scores.concat(parts)


def _donors(
    labels: np.ndarray, pool_labels: np.ndarray, owner: np.ndarray, opposite: bool, rng: np.random.Generator
) -> np.ndarray:
    """For each query, a random rollout of another query whose decision is the opposite (or same) label; -1 if none."""
    donors = np.full(len(labels), -1)
    for i, label in enumerate(labels):
        pool = np.flatnonzero(((pool_labels != label) if opposite else (pool_labels == label)) & (owner != i))
        if len(pool):
            donors[i] = rng.choice(pool)
    return donors


def _confidence_stats(scores: Scores, mask: np.ndarray) -> dict[str, float | int | None]:
    """Mean confidence of the masked rows: renormalised over the labels, and full-vocabulary."""
    if not mask.any():
        return {"n": 0, "mean_confidence": None, "mean_confidence_full_vocab": None, "share_conf_gt_0.99": None}
    p = scores.p_unsafe_norm[mask]
    conf = np.maximum(p, 1 - p)
    return {
        "n": int(mask.sum()),
        "mean_confidence": float(conf.mean()),
        "mean_confidence_full_vocab": float(scores.confidence[mask].mean()),
        "share_conf_gt_0.99": float(np.mean(conf > 0.99)),
    }


KINDS = ("opposite_label_donor", "same_label_donor")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    """One row per model: original decisions, then each swap's flip rate and confidences."""
    lines = [
        "| model | queries | own decisions: accuracy / share unsafe / mean conf / conf>0.99 "
        "| opposite-label donor: flip rate / conf of flipped / conf of kept "
        "| same-label donor (control): flip rate |",
        "|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        o, opp, same = r["original"], r["opposite_label_donor"], r["same_label_donor"]
        lines.append(
            f"| {name} | {r['n_queries']} | {_pct(o['accuracy'])} / {_pct(o['share_unsafe'])} / "
            f"{_pct(o['mean_confidence'])} / {_pct(o['share_conf_gt_0.99'])} "
            f"| {_pct(opp['flip_rate'])} (n={opp['n']}) / {_pct(opp['flipped']['mean_confidence'])} / "
            f"{_pct(opp['kept']['mean_confidence'])} | {_pct(same['flip_rate'])} (n={same['n']}) |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(runs))
    for j, kind in enumerate(KINDS):
        rates = [100 * (r[kind]["flip_rate"] or 0.0) for r in runs.values()]
        left.bar(x + (j - 0.5) * 0.38, rates, width=0.38, label=kind.replace("_", " "))
    left.set_xticks(x, list(runs))
    left.set_ylabel("decisions that flip, %")
    left.set_ylim(0, 100)
    left.set_title("Swap in another query's reasoning")
    left.legend(fontsize=8)
    for j, part in enumerate(("flipped", "kept")):
        conf = [100 * (r["opposite_label_donor"][part]["mean_confidence"] or 0.0) for r in runs.values()]
        right.bar(x + (j - 0.5) * 0.38, conf, width=0.38, label=f"{part} (opposite-label donor)")
    own = [100 * r["original"]["mean_confidence"] for r in runs.values()]
    right.scatter(x, own, color="k", marker="_", s=600, label="own reasoning", zorder=3)
    right.set_xticks(x, list(runs))
    right.set_ylabel("mean confidence of the decision, %")
    right.set_ylim(50, 100)
    right.set_title("Confidence after the swap")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
