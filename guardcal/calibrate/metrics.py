"""Calibration and ranking metrics for a binary safe/unsafe classifier.

``y_unsafe``/``pred_unsafe`` are 0/1 with 1 = "unsafe"; ``p_unsafe`` is P(unsafe)
renormalised over the two labels; ``confidence`` is the top-label confidence (the
predicted label's decision-token probability over the full vocabulary, so it may be
below 0.5); ``correct`` is 1 where the prediction matches the gold label. Results are
plain Python numbers; unusable input raises :class:`~guardcal.errors.CalibrationError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from guardcal.errors import CalibrationError

METRIC_NAMES: tuple[str, ...] = (
    "n",
    "accuracy",
    "ece",
    "ece_equal_width",
    "sce",
    "mce",
    "brier",
    "nll",
    "auroc",
    "auroc_unsafe",
    "overconfident_ratio",
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
_Table = tuple[IntArray, FloatArray, FloatArray]
_PROB_HINT = "values outside [0, 1]; pass probabilities, not logits"
_LABEL_HINT = "values not in {0, 1}; pass 0/1 ints or bools (1 = unsafe; for `correct`, 1 = right)"


def _vector(values: ArrayLike, name: str, kind: str = "score") -> np.ndarray:
    """Validate a non-empty finite 1-D array; ``kind`` is "score", "prob" or "label"."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{name} is not numeric ({exc}); pass numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise CalibrationError(f"{name} has shape {arr.shape}; pass a non-empty 1-D array")
    checks = [(~np.isfinite(arr), "non-finite values (NaN or inf); drop or repair them")]
    if kind != "score":
        outside = (arr < 0) | (arr > 1) if kind == "prob" else (arr != 0) & (arr != 1)
        checks.append((outside, _PROB_HINT if kind == "prob" else _LABEL_HINT))
    for mask, problem in checks:
        if (bad := int(np.count_nonzero(mask))) > 0:
            raise CalibrationError(f"{name} has {bad} {problem}")
    return arr.astype(np.intp) if kind == "label" else arr


def _checked(**specs: tuple[ArrayLike, str]) -> list[np.ndarray]:
    """Validate each ``name=(values, kind)`` with :func:`_vector`; lengths must agree."""
    arrays = [_vector(values, name, kind) for name, (values, kind) in specs.items()]
    if len({arr.size for arr in arrays}) > 1:
        listed = ", ".join(f"{name} has {arr.size}" for name, arr in zip(specs, arrays, strict=True))
        raise CalibrationError(f"lengths differ: {listed}; pass one value per example in each")
    return arrays


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise CalibrationError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _uniform_ids(values: FloatArray, n_bins: int) -> tuple[IntArray, FloatArray]:
    edges = np.linspace(0.0, 1.0, _check_bins(n_bins) + 1)
    return np.searchsorted(edges[1:-1], values, side="right").astype(np.intp), edges


def _quantile_ids(values: FloatArray, n_bins: int) -> IntArray:
    order, ids = np.argsort(values, kind="stable"), np.empty(values.size, dtype=np.intp)
    chunks = np.array_split(order, min(_check_bins(n_bins), values.size))
    ids[order] = np.repeat(np.arange(len(chunks)), [len(chunk) for chunk in chunks])
    return ids


def _bin_table(values: FloatArray, targets: np.ndarray, ids: IntArray) -> _Table:
    counts = np.bincount(ids)
    keep = counts > 0
    sums, hits = np.bincount(ids, weights=values), np.bincount(ids, weights=targets * 1.0)
    return counts[keep].astype(np.intp), sums[keep] / counts[keep], hits[keep] / counts[keep]


def _weighted_gap(values: FloatArray, targets: np.ndarray, ids: IntArray) -> float:
    counts, mean_v, mean_t = _bin_table(values, targets, ids)
    return float(np.sum(counts / values.size * np.abs(mean_t - mean_v)))


def accuracy(y_unsafe: ArrayLike, pred_unsafe: ArrayLike) -> float:
    """Share of predictions equal to the gold label.

    Parameters
    ----------
    y_unsafe, pred_unsafe : array_like
        Gold and predicted 0/1 labels, 1 = unsafe.

    Returns
    -------
    float

    Examples
    --------
    >>> accuracy([1, 0, 1, 0], [1, 0, 0, 0])
    0.75
    """
    y, pred = _checked(y_unsafe=(y_unsafe, "label"), pred_unsafe=(pred_unsafe, "label"))
    return float(np.mean(y == pred))


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE with ``min(n_bins, n)`` equal-mass bins (adaptive CE, Nixon et al. 2019).

    ``sum_b |b|/n * |acc_b - conf_b|``, bins being ``np.array_split`` of the stable sort.

    Parameters
    ----------
    confidence, correct : array_like
        Top-label confidence in [0, 1]; 1 where the prediction was right, else 0.
    n_bins : int, default 15
        Number of equal-mass bins.

    Returns
    -------
    float

    Examples
    --------
    >>> round(ece([0.9, 0.8, 0.6, 0.3], [1, 1, 0, 1], n_bins=2), 4)
    0.1
    """
    conf, corr = _checked(confidence=(confidence, "prob"), correct=(correct, "label"))
    return _weighted_gap(conf, corr, _quantile_ids(conf, n_bins))


def ece_equal_width(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE, equal-width bins ``[k/n_bins, (k+1)/n_bins)``, last closed at 1.

    Bins follow the ``np.histogram`` convention; empty bins are skipped.

    Parameters
    ----------
    confidence, correct : array_like
        Top-label confidence in [0, 1]; 1 where the prediction was right, else 0.
    n_bins : int, default 15
        Number of equal-width bins.

    Returns
    -------
    float

    Examples
    --------
    >>> round(ece_equal_width([0.9, 0.8, 0.6, 0.3], [1, 1, 0, 1], n_bins=2), 4)
    0.25
    """
    conf, corr = _checked(confidence=(confidence, "prob"), correct=(correct, "label"))
    return _weighted_gap(conf, corr, _uniform_ids(conf, n_bins)[0])


def mce(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest gap over the equal-mass bins of :func:`ece`.

    Parameters
    ----------
    confidence, correct, n_bins
        As in :func:`ece`.

    Returns
    -------
    float

    Examples
    --------
    >>> round(mce([0.9, 0.8, 0.6, 0.3], [1, 1, 0, 1], n_bins=2), 4)
    0.15
    """
    conf, corr = _checked(confidence=(confidence, "prob"), correct=(correct, "label"))
    _, mean_c, acc = _bin_table(conf, corr, _quantile_ids(conf, n_bins))
    return float(np.max(np.abs(acc - mean_c)))


def sce(p_unsafe: ArrayLike, y_unsafe: ArrayLike, n_bins: int = 15) -> float:
    """Static calibration error (Nixon et al., 2019): mean over safe/unsafe of a classwise ECE.

    Class k bins ``p_k`` (``1 - p_unsafe`` or ``p_unsafe``) as :func:`ece_equal_width`.

    Parameters
    ----------
    p_unsafe, y_unsafe : array_like
        P(unsafe) in [0, 1] and the 0/1 gold label (1 = unsafe).
    n_bins : int, default 15
        Number of equal-width bins per class.

    Returns
    -------
    float

    Examples
    --------
    >>> round(sce([0.9, 0.2, 0.7, 0.4], [1, 0, 0, 1], n_bins=2), 4)
    0.25
    """
    p, y = _checked(p_unsafe=(p_unsafe, "prob"), y_unsafe=(y_unsafe, "label"))
    gaps = [_weighted_gap(p_k, hit, _uniform_ids(p_k, n_bins)[0]) for p_k, hit in ((1.0 - p, y == 0), (p, y == 1))]
    return float(np.mean(gaps))


def brier(p_unsafe: ArrayLike, y_unsafe: ArrayLike) -> float:
    """Brier score ``mean((p_unsafe - y_unsafe) ** 2)``.

    Parameters
    ----------
    p_unsafe, y_unsafe : array_like
        P(unsafe) in [0, 1] and the 0/1 gold label (1 = unsafe).

    Returns
    -------
    float

    Examples
    --------
    >>> round(brier([0.9, 0.2], [1, 1]), 4)
    0.325
    """
    p, y = _checked(p_unsafe=(p_unsafe, "prob"), y_unsafe=(y_unsafe, "label"))
    return float(np.mean((p - y) ** 2))


def nll(p_unsafe: ArrayLike, y_unsafe: ArrayLike, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood (nats) of the gold label.

    Parameters
    ----------
    p_unsafe, y_unsafe : array_like
        P(unsafe) in [0, 1] and the 0/1 gold label (1 = unsafe).
    eps : float, default 1e-12
        Probabilities are clipped to ``[eps, 1 - eps]`` so the loss stays finite.

    Returns
    -------
    float

    Examples
    --------
    >>> round(nll([0.5, 0.5], [1, 0]), 4)
    0.6931
    """
    p, y = _checked(p_unsafe=(p_unsafe, "prob"), y_unsafe=(y_unsafe, "label"))
    if not 0.0 < eps < 0.5:
        raise CalibrationError(f"eps must lie in (0, 0.5), got {eps!r}; use e.g. 1e-12")
    gold = np.clip(np.where(y == 1, p, 1.0 - p), eps, 1.0 - eps)
    return float(np.mean(-np.log(gold)))


def auroc(scores: ArrayLike, positives: ArrayLike) -> float:
    """ROC AUC via the Mann-Whitney U statistic (average ranks: a tie counts 1/2).

    Parameters
    ----------
    scores, positives : array_like
        Finite scores (higher = more likely positive) and 0/1 class membership.

    Returns
    -------
    float
        AUROC in [0, 1], or ``float('nan')`` when only one class is present.

    Examples
    --------
    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> auroc([0.5, 0.5], [1, 0]), auroc([0.2, 0.7], [1, 1])
    (0.5, nan)
    """
    s, pos = _checked(scores=(scores, "score"), positives=(positives, "label"))
    n_pos, n_neg = int(pos.sum()), int(s.size - pos.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(s[order])) + 1]
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u_stat = ranks[pos == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def paired_bootstrap(
    statistic: Callable[[FloatArray, np.ndarray], float],
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    positives: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
) -> FloatArray:
    """``statistic(B) - statistic(A)`` over row resamples shared by both scorers.

    Two scorers read on the same rows are compared on the same resamples, so the rows both find
    hard cancel out. Resamples that hold one class only are skipped, so fewer than ``n_boot``
    differences can come back. The same ``seed`` draws the same resamples for any ``statistic``.

    Examples
    --------
    >>> d = paired_bootstrap(auroc, [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], n_boot=50)
    >>> float(abs(d).max())
    0.0
    """
    a, b, y = _checked(scores_a=(scores_a, "score"), scores_b=(scores_b, "score"), positives=(positives, "label"))
    if n_boot < 1:
        raise CalibrationError(f"n_boot must be >= 1, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        if y[i].min() == y[i].max():
            continue
        diffs.append(statistic(b[i], y[i]) - statistic(a[i], y[i]))
    return np.asarray(diffs, dtype=np.float64)


def overconfident_ratio(confidence: ArrayLike, threshold: float = 0.99) -> float:
    """Share of predictions with confidence strictly above ``threshold``.

    Parameters
    ----------
    confidence : array_like
        Top-label confidence in [0, 1].
    threshold : float, default 0.99
        Cut-off in [0, 1].

    Returns
    -------
    float

    Examples
    --------
    >>> overconfident_ratio([0.995, 0.5, 0.999, 0.99])
    0.5
    """
    conf = _vector(confidence, "confidence", "prob")
    if not 0.0 <= threshold <= 1.0:
        raise CalibrationError(f"threshold must lie in [0, 1], got {threshold!r}")
    return float(np.mean(conf > threshold))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of a reliability diagram, non-empty bins only."""

    mean_confidence: FloatArray
    accuracy: FloatArray
    counts: IntArray
    edges: FloatArray


def reliability_curve(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Literal["quantile", "uniform"] = "quantile"
) -> ReliabilityCurve:
    """Bin predictions by confidence for a reliability diagram.

    Parameters
    ----------
    confidence, correct : array_like
        Top-label confidence in [0, 1]; 1 where the prediction was right, else 0.
    n_bins : int, default 15
        Number of bins.
    strategy : {"quantile", "uniform"}, default "quantile"
        Equal-mass bins (as in :func:`ece`) or equal-width (:func:`ece_equal_width`).

    Returns
    -------
    ReliabilityCurve
        Per non-empty bin: mean confidence, accuracy, count, and ``edges`` of shape
        ``(m, 2)`` holding ``[low, high]`` (nominal for "uniform", observed for "quantile").

    Examples
    --------
    >>> curve = reliability_curve([0.9, 0.8, 0.6, 0.3], [1, 1, 0, 1], n_bins=2)
    >>> curve.accuracy.tolist(), curve.counts.tolist(), curve.edges.tolist()
    ([0.5, 1.0], [2, 2], [[0.3, 0.6], [0.8, 0.9]])
    """
    conf, corr = _checked(confidence=(confidence, "prob"), correct=(correct, "label"))
    if strategy == "quantile":
        ids = _quantile_ids(conf, n_bins)
        chunks = np.array_split(np.sort(conf), ids.max() + 1)
        low, high = np.array([c[0] for c in chunks]), np.array([c[-1] for c in chunks])
    elif strategy == "uniform":
        ids, grid = _uniform_ids(conf, n_bins)
        low, high = grid[:-1], grid[1:]
    else:
        raise CalibrationError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    occupied = np.bincount(ids, minlength=low.size) > 0
    counts, mean_c, acc = _bin_table(conf, corr, ids)
    return ReliabilityCurve(mean_c, acc, counts, np.column_stack([low[occupied], high[occupied]]))


def compute_metrics(
    y_unsafe: ArrayLike, pred_unsafe: ArrayLike, p_unsafe: ArrayLike, confidence: ArrayLike
) -> dict[str, float | int | None]:
    """Compute every metric of :data:`METRIC_NAMES`, keys in that order.

    ``auroc`` scores ``confidence`` against ``correct = (pred_unsafe == y_unsafe)``,
    ``auroc_unsafe`` scores ``p_unsafe`` against ``y_unsafe``. To stay JSON-safe, an
    undefined value (AUROC with one class present) is ``None``, never NaN.

    Parameters
    ----------
    y_unsafe, pred_unsafe, p_unsafe, confidence : array_like
        Gold and predicted 0/1 labels, P(unsafe), top-label confidence (module docstring).

    Returns
    -------
    dict of str to float, int or None
        ``"n"`` is an int; the other values are floats, or ``None`` if undefined.

    Examples
    --------
    >>> m = compute_metrics([1, 0, 1, 1], [1, 0, 0, 1], [0.9, 0.2, 0.4, 0.7], [0.9] * 4)
    >>> m["n"], m["accuracy"], round(m["brier"], 4), tuple(m) == METRIC_NAMES
    (4, 0.75, 0.125, True)
    >>> compute_metrics([1, 1], [1, 1], [0.8, 0.6], [0.8, 0.6])["auroc"] is None
    True
    """
    y, pred, p, conf = _checked(
        y_unsafe=(y_unsafe, "label"),
        pred_unsafe=(pred_unsafe, "label"),
        p_unsafe=(p_unsafe, "prob"),
        confidence=(confidence, "prob"),
    )
    correct = (y == pred).astype(np.intp)
    values: dict[str, float | int | None] = {
        "n": int(y.size),
        "accuracy": accuracy(y, pred),
        "ece": ece(conf, correct),
        "ece_equal_width": ece_equal_width(conf, correct),
        "sce": sce(p, y),
        "mce": mce(conf, correct),
        "brier": brier(p, y),
        "nll": nll(p, y),
        "auroc": auroc(conf, correct),
        "auroc_unsafe": auroc(p, y),
        "overconfident_ratio": overconfident_ratio(conf),
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}
