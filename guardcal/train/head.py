"""``guardcal train --method head``: fit a pooled head (``core.pooled_head``) on a model's hidden states.

The model (with ``--adapter``'s LoRA, if given) is frozen. For each training row, its first
``max_input_tokens`` window is rendered with the prompt profile, and the head's readouts are read from
one forward (``scoring.pooled``). A logistic regression is fitted on them after standardising, with
its regularisation chosen by 5-fold CV (folds stratified by label, and by domain when there is one).

Row weights: the classes balanced, or with ``head_domain_prefix``, the rows whose id starts with it
(e.g. ``oai-``, the OpenAI Moderation rows of a request mix) form one domain and the rest another.
Each (domain, label) cell then weighs the same in total (the prefixed domain's cells
``head_domain_weight`` times that), and the CV score is the mean of the two domains' AUROCs.

The output folder holds the adapter's LoRA (copied), ``pooled_head.safetensors``, ``train_config.json``
and ``head_fit.json`` (the readouts, the CV score of every C, the one chosen, the row counts).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from guardcal.core.pooled_head import FILENAME, POOLS, PooledHead
from guardcal.errors import ConfigError

GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def parse_readouts(spec: str, layers: int) -> tuple[tuple[str, int], ...]:
    """``"mean@10,last@30"`` → ``(("mean", 10), ("last", 30))``. Empty: the means at a third, half and two
    thirds of the layers, and the decision position at the top (10, 15, 20 and 30 for 30 layers)."""
    if not spec.strip():
        return (
            ("mean", round(layers / 3)),
            ("mean", round(layers / 2)),
            ("mean", round(2 * layers / 3)),
            ("last", layers),
        )
    out = []
    for part in spec.split(","):
        pool, _, layer = part.strip().partition("@")
        if pool not in POOLS or not layer.isdigit() or not 0 <= int(layer) <= layers:
            raise ConfigError(
                f"head_readouts: {part.strip()!r} is not POOL@LAYER with POOL in {POOLS} and LAYER in 0..{layers} "
                "(hidden_states indices); e.g. mean@10,mean@15,last@30"
            )
        out.append((pool, int(layer)))
    return tuple(out)


def row_weights(domain: np.ndarray | None, y: np.ndarray, domain_weight: float = 1.0) -> np.ndarray:
    """Per-row weights, mean 1: the classes balanced, or (with ``domain``) every (domain, label) cell the
    same total, the cells of domain 1 ``domain_weight`` times that."""
    w = np.zeros(len(y))
    if domain is None:
        for c in (0, 1):
            w[y == c] = 1.0 / max(int(np.sum(y == c)), 1)
    else:
        for d in (0, 1):
            for c in (0, 1):
                cell = (domain == d) & (y == c)
                w[cell] = (domain_weight if d == 1 else 1.0) / max(int(cell.sum()), 1)
    return w * len(w) / w.sum()


def head_pipeline(c: float) -> Any:
    """Standardise, then logistic regression with inverse regularisation ``c``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def cv_scores(
    x: np.ndarray,
    y: np.ndarray,
    domain: np.ndarray | None,
    seed: int,
    domain_weight: float = 1.0,
    weigh_domains: bool = True,
) -> dict[float, float]:
    """For each C of :data:`GRID`: the mean held-out-fold AUROC (with domains, the mean of theirs), the
    folds' training rows weighed by :func:`row_weights` (with ``weigh_domains=False``, the classes
    balanced over all rows, while the folds and the scores still go by domain)."""
    from sklearn.model_selection import StratifiedKFold

    from guardcal.calibrate.metrics import auroc

    strata = y if domain is None else 2 * domain + y
    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(x, strata))
    out = {}
    for c in GRID:
        per_fold = []
        for train, held in folds:
            dtr = None if domain is None or not weigh_domains else domain[train]
            fitted = head_pipeline(c).fit(
                x[train], y[train], logisticregression__sample_weight=row_weights(dtr, y[train], domain_weight)
            )
            s, yh = fitted.decision_function(x[held]), y[held]
            if domain is None:
                per_fold.append(auroc(s, yh))
            else:
                dh = domain[held]
                per_fold.append((auroc(s[dh == 1], yh[dh == 1]) + auroc(s[dh == 0], yh[dh == 0])) / 2)
        out[c] = float(np.mean(per_fold))
    return out


def to_head(fitted: Any, readouts: tuple[tuple[str, int], ...]) -> PooledHead:
    """The fitted pipeline as a :class:`PooledHead`."""
    scaler, lr = fitted[0], fitted[1]
    return PooledHead(readouts, lr.coef_[0], scaler.mean_, scaler.scale_, float(lr.intercept_[0]))


def fit_head(cfg: Any) -> Path:
    """Read the training rows' features, fit the head and write the output folder (module docstring)."""
    from tqdm.auto import tqdm

    from guardcal.core.examples import UNSAFE
    from guardcal.core.pooled_head import input_span
    from guardcal.core.profiles import load_profile
    from guardcal.core.prompt import PromptTemplate
    from guardcal.core.windows import first_window
    from guardcal.data.loaders import load_dataset
    from guardcal.models.loading import check_adapter_dir, load_model
    from guardcal.scoring.pooled import pooled_features

    t0 = time.time()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_dataset(cfg.train_dataset, cfg.data_dir)
    y = np.array([e.label == UNSAFE for e in rows], dtype=int)
    domain = None
    if cfg.head_domain_weight <= 0 or (cfg.head_domain_weight != 1.0 and not cfg.head_domain_prefix):
        raise ConfigError(
            f"head_domain_weight {cfg.head_domain_weight} needs to be above 0, and weighs the rows of "
            "head_domain_prefix: give both (e.g. --head-domain-prefix oai- --head-domain-weight 2) or neither"
        )
    if cfg.head_domain_prefix:
        domain = np.array([e.id.startswith(cfg.head_domain_prefix) for e in rows], dtype=int)
        if domain.all() or not domain.any():
            raise ConfigError(
                f"head_domain_prefix {cfg.head_domain_prefix!r} puts all {len(rows)} rows in one domain; "
                "give a prefix that only some row ids start with, or none"
            )
    loaded = load_model(cfg.model, cfg.adapter, dtype="float32")
    readouts = parse_readouts(cfg.head_readouts, int(loaded.model.config.num_hidden_layers))
    template = PromptTemplate.for_profile(load_profile(cfg.prompt), cfg.reasoning).bind(loaded.tokenizer)
    x = np.stack(
        [
            pooled_features(
                loaded.model,
                [input_span(template, loaded.tokenizer, first_window(e.text, loaded.tokenizer, cfg.max_input_tokens))],
                readouts,
            )[0]
            for e in tqdm(rows, desc="hidden states", unit="row")
        ]
    ).astype(np.float64)
    cv = cv_scores(x, y, domain, cfg.seed, cfg.head_domain_weight)
    c = max(cv, key=lambda k: cv[k])
    weights = row_weights(domain, y, cfg.head_domain_weight)
    fitted = head_pipeline(c).fit(x, y, logisticregression__sample_weight=weights)
    to_head(fitted, readouts).save(out / FILENAME)
    if cfg.adapter is not None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(check_adapter_dir(cfg.adapter) / name, out / name)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    fit = {"readouts": [list(r) for r in readouts], "cv": {str(k): round(v, 4) for k, v in cv.items()}, "C": c}
    fit |= {"rows": len(rows), "unsafe": int(y.sum()), "seconds": round(time.time() - t0, 1)}
    if domain is not None:
        fit["domain_rows"] = int(domain.sum())
    (out / "head_fit.json").write_text(json.dumps(fit, indent=2) + "\n")
    return out
