"""Average LoRA adapters of one base model in weight space (a "model soup" of their deltas).

    python scripts/soup_adapters.py --adapter runs/adapters/v1=0.5 --adapter default=0.5 --out runs/soup-50

Each adapter adds ``s_i * B_i @ A_i`` to a weight (``s_i`` = its lora_alpha / r for that module).
The soup adds ``sum_i w_i * s_i * B_i @ A_i`` exactly: the A matrices are stacked along the rank, the
B matrices side by side, each scaled by ``w_i * s_i``, and the new adapter has lora_alpha = r (scaling
1). So the rank is the sum of the ranks (two rank-16 adapters give a rank-32 one, twice the size),
and nothing is approximated. The weights must be positive and sum to 1. Every adapter must target
the same modules with plain LoRA (no DoRA, no rsLoRA, no bias). ``soup.json`` records the sources,
their sha256 and weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def _pattern(patterns: dict | None, module: str) -> str | None:
    """The key of ``patterns`` (a rank_pattern / alpha_pattern) that PEFT applies to ``module``, if any."""
    from peft.utils.other import get_pattern_key

    keys = list(patterns or {})
    key = get_pattern_key(keys, module)
    return key if key in keys else None


def _scaling(config: dict, module: str) -> tuple[int, float]:
    """The rank and the alpha / r of ``module`` under ``config``, as PEFT resolves the patterns."""
    rank_key, alpha_key = _pattern(config.get("rank_pattern"), module), _pattern(config.get("alpha_pattern"), module)
    r = config["rank_pattern"][rank_key] if rank_key else config["r"]
    alpha = config["alpha_pattern"][alpha_key] if alpha_key else config["lora_alpha"]
    return r, alpha / r


def _check_plain_lora(name: str, config: dict) -> None:
    problems = [
        f"{key}={config.get(key)!r}"
        for key, plain in (("peft_type", "LORA"), ("use_dora", False), ("use_rslora", False), ("bias", "none"))
        if config.get(key, plain) != plain
    ]
    if problems:
        raise ValueError(f"adapter {name}: {', '.join(problems)}; only plain LoRA adapters can be averaged exactly")


def soup(adapters: list[tuple[Path, float]]) -> tuple[dict[str, torch.Tensor], dict]:
    """The averaged tensors and adapter config of ``adapters`` ((folder, weight) pairs)."""
    if len(adapters) < 2:
        raise ValueError("give at least two adapters to average")
    weights = [w for _, w in adapters]
    if min(weights) <= 0 or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise ValueError(f"weights {weights} must be positive and sum to 1 (an average of the adapters)")
    configs = [json.loads((folder / CONFIG).read_text()) for folder, _ in adapters]
    tensors = [load_file(str(folder / WEIGHTS)) for folder, _ in adapters]
    for (folder, _), config, state in zip(adapters, configs, tensors, strict=True):
        _check_plain_lora(str(folder), config)
        if config.get("target_modules") != configs[0].get("target_modules") or set(state) != set(tensors[0]):
            raise ValueError(
                f"adapter {folder} targets other modules than {adapters[0][0]}: average adapters of one recipe"
            )
    modules = sorted({m.group("module") for key in tensors[0] if (m := _LORA_KEY.match(key))})
    if len(modules) * 2 != len(tensors[0]):
        raise ValueError(f"adapter {adapters[0][0]} holds tensors other than lora_A / lora_B weights")
    out: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module in modules:
        parts_a, parts_b = [], []
        for config, state, weight in zip(configs, tensors, weights, strict=True):
            a, b = state[f"{module}.lora_A.weight"].float(), state[f"{module}.lora_B.weight"].float()
            r, scaling = _scaling(config, module)
            if a.shape[0] != r:
                raise ValueError(f"{module}: lora_A has rank {a.shape[0]}, the config says {r}")
            parts_a.append(a)
            parts_b.append(b * (weight * scaling))
        out[f"{module}.lora_A.weight"] = torch.cat(parts_a, dim=0).contiguous()
        out[f"{module}.lora_B.weight"] = torch.cat(parts_b, dim=1).contiguous()
        ranks[module] = out[f"{module}.lora_A.weight"].shape[0]
    return out, _soup_config(configs[0], modules, ranks)


def _soup_config(first: dict, modules: list[str], ranks: dict[str, int]) -> dict:
    """``first``'s config with rank = the summed ranks and alpha = rank (scaling 1) for every module."""
    by_key: dict[str | None, set[int]] = {}
    for m in modules:
        by_key.setdefault(_pattern(first.get("rank_pattern"), m), set()).add(ranks[m])
    if any(len(found) != 1 for found in by_key.values()):
        raise ValueError(f"modules under one rank_pattern key get different ranks in the soup: {by_key}")
    pattern = {key: found.pop() for key, found in by_key.items() if key is not None}
    default_rank = by_key[None].pop() if None in by_key else first["r"]
    return {
        **first,
        "r": default_rank,
        "lora_alpha": default_rank,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "init_lora_weights": True,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", action="append", required=True, help="FOLDER=WEIGHT (or default=WEIGHT), repeatable")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    from guardcal.models.loading import check_adapter_dir

    adapters = []
    for spec in args.adapter:
        folder, sep, weight = spec.rpartition("=")
        if not sep or not folder:
            ap.error(f"--adapter {spec!r}: write FOLDER=WEIGHT, e.g. runs/sft-a=0.5")
        try:
            value = float(weight)
        except ValueError:
            ap.error(f"--adapter {spec!r}: the weight {weight!r} is not a number")
        adapters.append((check_adapter_dir(folder), value))
    tensors, config = soup(adapters)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out / WEIGHTS))
    (args.out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    manifest = {
        "method": "weighted average of LoRA deltas (scripts/soup_adapters.py), ranks concatenated",
        "sources": [
            {"adapter": str(folder), "weight": w, "sha256": _sha256(folder / WEIGHTS)} for folder, w in adapters
        ],
    }
    (args.out / "soup.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"out": str(args.out), "rank": config["r"], "rank_pattern": config["rank_pattern"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
