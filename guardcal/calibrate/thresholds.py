"""Escalation thresholds on the calibrated confidence, fixed or risk-controlled.

The rule: with calibrated ``p = P(unsafe)`` and confidence ``c = max(p, 1 - p)``, a prediction
is auto-decided when ``c >= threshold`` and escalated otherwise; ``threshold_safe`` applies to
predicted-safe examples (``p < 0.5``), ``threshold_unsafe`` to predicted-unsafe ones (``p >= 0.5``).
A label listed in ``Thresholds.escalate_all`` (no threshold could be certified for it) always
escalates, whatever its threshold.

:func:`risk_controlled_thresholds` is Learn-Then-Test (Angelopoulos et al., 2021) with
fixed-sequence testing. For each candidate ``t`` (high to low), ``H0(t)``: "the error rate among
auto-decided examples exceeds alpha". With ``k`` errors among the ``n`` calibration examples
auto-decided at ``t``, the p-value is ``P(Bin(n, alpha) <= k)`` (the exact binomial test, i.e.
Clopper-Pearson). Walking down, each ``H0`` is tested at level ``delta`` and the walk stops at the
first non-rejection; the last rejected ``t`` is chosen, so with probability >= 1 - delta the
error among auto-decided examples is <= alpha. Leading candidates auto-deciding so few examples
that even ``k = 0`` cannot reject (``(1 - alpha)^n > delta``) are skipped rather than ending the
walk; that choice depends on the confidences only, never on the labels. ``start_errors = s`` moves
that start further down, to the first candidate where even ``s`` errors could still be rejected
(``P(Bin(n, alpha) <= s) <= delta``): with ``s = 0`` one error among the few most confident rows ends
the walk before any candidate with enough rows to absorb it is tested; ``s`` is fixed before the
labels are looked at, so the guarantee is unchanged. With ``per_label`` the
predicted-safe and predicted-unsafe groups are tested separately, each at ``delta / 2``
(Bonferroni), so both guarantees hold together with probability >= 1 - delta.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from guardcal.calibrate.base import check_calibration_set, check_scores, confidence
from guardcal.core.examples import SAFE, UNSAFE
from guardcal.errors import CalibrationError

NO_THRESHOLD_FLAG = "no threshold met the target: everything escalates"
_FIELDS = ("safe", "unsafe", "method", "details")


def _check_threshold(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value <= 1.0:
        raise CalibrationError(f"{name} must be a number in [0.5, 1] (a confidence max(p, 1 - p)), got {value!r}")
    return float(value)


def _check_rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise CalibrationError(f"{name} must be a number in (0, 1), got {value!r}; e.g. 0.05")
    return float(value)


@dataclass(frozen=True)
class Thresholds:
    """Confidence thresholds per predicted label, and how they were chosen.

    Parameters
    ----------
    safe, unsafe : float
        Thresholds in [0.5, 1] for predicted-safe (``p < 0.5``) and predicted-unsafe predictions.
    method : str
        ``"fixed"`` or ``"risk_controlled"``.
    details : dict
        JSON-safe facts about the choice (targets, sample sizes, calibration coverage/error, flags).
    escalate_all : tuple of str, default ()
        Labels (``"safe"``/``"unsafe"``) whose predictions always escalate.
    """

    safe: float
    unsafe: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    escalate_all: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "safe", _check_threshold(self.safe, "threshold_safe"))
        object.__setattr__(self, "unsafe", _check_threshold(self.unsafe, "threshold_unsafe"))
        object.__setattr__(self, "escalate_all", tuple(self.escalate_all))
        if not set(self.escalate_all) <= {SAFE, UNSAFE}:
            raise CalibrationError(f"escalate_all may hold only 'safe'/'unsafe', got {list(self.escalate_all)}")
        if not isinstance(self.method, str) or not isinstance(self.details, dict):
            raise CalibrationError("Thresholds needs method as a str and details as a dict")

    def auto_mask(self, p_unsafe: ArrayLike) -> NDArray[np.bool_]:
        """True where a calibrated P(unsafe) is auto-decided, False where it escalates.

        Parameters
        ----------
        p_unsafe : array_like
            Calibrated P(unsafe) values in [0, 1].

        Returns
        -------
        ndarray of bool
        """
        p = check_scores(p_unsafe, "p_unsafe")
        unsafe = p >= 0.5
        mask = confidence(p) >= np.where(unsafe, self.unsafe, self.safe)
        for label in self.escalate_all:
            mask &= unsafe if label == SAFE else ~unsafe
        return mask

    def decide(self, p_unsafe: float) -> Literal["auto", "escalate"]:
        """``"auto"`` if one calibrated P(unsafe) is auto-decided, else ``"escalate"``."""
        return "auto" if bool(self.auto_mask([p_unsafe])[0]) else "escalate"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ``safe``, ``unsafe``, ``method``, ``details``, ``escalate_all``."""
        return {
            "safe": self.safe,
            "unsafe": self.unsafe,
            "method": self.method,
            "details": self.details,
            "escalate_all": list(self.escalate_all),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        """Rebuild from :meth:`to_dict` output; raises CalibrationError naming a missing key."""
        if not isinstance(d, Mapping):
            raise CalibrationError(f"thresholds must be a JSON object, got {type(d).__name__}")
        if missing := [k for k in _FIELDS if k not in d]:
            raise CalibrationError(f"thresholds dict is missing {missing}; pass what Thresholds.to_dict() returned")
        details, escalate = d["details"], d.get("escalate_all", [])
        if not isinstance(details, Mapping) or not isinstance(escalate, (list, tuple)):
            raise CalibrationError("thresholds 'details' must be an object and 'escalate_all' a list of labels")
        return cls(d["safe"], d["unsafe"], d["method"], dict(details), tuple(escalate))


def fixed_thresholds(threshold: float, threshold_unsafe: float | None = None) -> Thresholds:
    """Plain thresholds: ``threshold`` for both labels, or for predicted-safe only.

    Parameters
    ----------
    threshold : float
        Confidence threshold in [0.5, 1] (0.5 auto-decides everything).
    threshold_unsafe : float, optional
        Separate threshold for predicted-unsafe predictions; defaults to ``threshold``.

    Returns
    -------
    Thresholds
    """
    safe = _check_threshold(threshold, "threshold")
    unsafe = safe if threshold_unsafe is None else _check_threshold(threshold_unsafe, "threshold_unsafe")
    return Thresholds(safe=safe, unsafe=unsafe, method="fixed", details={})


def coverage_and_error(p_unsafe: ArrayLike, labels: ArrayLike, thresholds: Thresholds) -> dict[str, Any]:
    """Share auto-decided and the error rate among them.

    Parameters
    ----------
    p_unsafe, labels : array_like
        Calibrated P(unsafe) and 0/1 gold labels (1 = unsafe).
    thresholds : Thresholds

    Returns
    -------
    dict
        ``coverage`` (float), ``error`` (float, or None when nothing is auto-decided), ``n_auto``, ``n``.
    """
    p, y = check_calibration_set(p_unsafe, labels, need_both_classes=False)
    auto = thresholds.auto_mask(p)
    n_auto = int(auto.sum())
    errors = int(np.count_nonzero((p[auto] >= 0.5) != (y[auto] == 1)))
    return {"coverage": n_auto / p.size, "error": errors / n_auto if n_auto else None, "n_auto": n_auto, "n": p.size}


def escalation_shares(thresholds: Thresholds, p_unsafe: ArrayLike, rows: str = "fit") -> dict[str, Any]:
    """What ``thresholds`` do to rows with these calibrated P(unsafe): the share that escalates, and per
    predicted label the share predicted so (JSON-safe; ``rows`` names the rows, e.g. "fit")."""
    p = check_scores(p_unsafe, "p_unsafe")
    n = int(p.size)
    escalate = 1.0 - float(thresholds.auto_mask(p).mean()) if n else 0.0
    predicted = {SAFE: float(np.mean(p < 0.5)) if n else 0.0, UNSAFE: float(np.mean(p >= 0.5)) if n else 0.0}
    return {"rows": rows, "n": n, "escalate": escalate, "predicted": predicted}


def _recorded_shares(thresholds: Thresholds) -> dict[str, Any] | None:
    """:func:`escalation_shares` as far as risk-controlled thresholds record them (their threshold rows)."""
    details = thresholds.details
    groups, calibration, n = details.get("groups"), details.get("calibration"), details.get("n")
    if not isinstance(groups, dict) or not isinstance(calibration, dict) or not isinstance(n, int) or n <= 0:
        return None
    coverage = calibration.get("coverage")
    sizes: dict[str, int] = {}
    for label, group in groups.items():
        if isinstance(group, dict) and isinstance(group.get("n"), int):
            sizes[label] = group["n"]
    if not isinstance(coverage, (int, float)) or not {SAFE, UNSAFE} <= sizes.keys():
        return None
    return {
        "rows": "threshold",
        "n": n,
        "escalate": 1.0 - float(coverage),
        "predicted": {label: sizes[label] / n for label in (SAFE, UNSAFE)},
    }


def uncertified_warning(thresholds: Thresholds, shares: Mapping[str, Any] | None = None) -> str | None:
    """A warning when the thresholds certify nothing for a predicted label (it is never auto-decided), or None.

    ``shares`` (:func:`escalation_shares`) gives the share that will escalate; without it the shares the
    thresholds recorded on their own rows are used, and failing those the warning names the label only.
    A label escalated on purpose (``escalate_below`` 1.0) is not warned about.
    """
    labels = [label for label in (SAFE, UNSAFE) if label in thresholds.escalate_all]
    if not labels or "escalate_below" in thresholds.details:
        return None
    named = " and ".join(f"predicted-{label}" for label in labels)
    message = (
        f"the thresholds certify nothing for {named} inputs: no threshold met the risk-control target, so every "
        f"input the model calls {' or '.join(labels)} escalates and is never auto-decided"
    )
    shares = shares if shares is not None else _recorded_shares(thresholds)
    if shares:
        called = ", ".join(f"{100 * shares['predicted'][label]:.1f}% called {label}" for label in labels)
        message += f"; on the {shares['n']} {shares['rows']} rows {100 * shares['escalate']:.1f}% escalate ({called})"
    return message


def binom_cdf(k: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """``P(Bin(n, alpha) <= k)`` for real ``k`` and ``n`` (the regularised incomplete beta ``I_{1-alpha}(n-k, k+1)``,
    equal to scipy's binomial CDF at whole numbers); 1 where ``k >= n`` (no rejection possible)."""
    from scipy.special import betainc

    k_arr, n_arr = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    rest = np.maximum(n_arr - k_arr, 1e-300)
    return np.where(k_arr >= n_arr, 1.0, betainc(rest, k_arr + 1.0, 1.0 - alpha))


def _counts(
    conf: NDArray[np.float64], wrong: NDArray[np.bool_], grid: NDArray[np.float64], weights: NDArray[np.float64] | None
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Per candidate: rows auto-decided, and the sample size and errors the binomial test takes. Weighted,
    those are the Kish effective size ``(sum w)^2 / sum w^2`` and ``weighted error share x n_eff``.
    ``wrong`` may hold several labelings, one per leading row (``(draws, rows)``); the errors then do too."""
    order = np.argsort(conf)
    n_rows = conf.size - np.searchsorted(conf[order], grid, side="left")  # auto-decided count at each candidate
    top_wrong = wrong[..., order][..., ::-1].astype(np.float64)

    def top_sums(v: NDArray[np.float64]) -> NDArray[np.float64]:  # sums over the n most confident rows
        return np.concatenate([np.zeros((*v.shape[:-1], 1)), np.cumsum(v, axis=-1)], axis=-1)[..., n_rows]

    if weights is None:
        return n_rows, n_rows.astype(np.float64), top_sums(top_wrong)
    w = weights[order][::-1]
    sw, sw2, swk = top_sums(w), top_sums(w**2), top_sums(w * top_wrong)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_eff = np.where(sw2 > 0, sw**2 / np.where(sw2 > 0, sw2, 1.0), 0.0)
        k_eff = np.where(sw > 0, swk / np.where(sw > 0, sw, 1.0), 0.0) * n_eff
    return n_rows, n_eff, k_eff


def _p_values(
    conf: NDArray[np.float64],
    wrong: NDArray[np.bool_],
    alpha: float,
    grid: NDArray[np.float64],
    weights: NDArray[np.float64] | None,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per candidate of ``grid`` (sorted high to low): rows auto-decided, the test's sample size and errors,
    and the binomial p-value of "error <= alpha". None of it depends on where the walk starts."""
    from scipy.stats import binom  # calibration-time only

    n_rows, n, k = _counts(conf, wrong, grid, weights)
    return n_rows, n, k, (binom.cdf(k, n, alpha) if weights is None else binom_cdf(k, n, alpha))


def _first_testable(
    n: NDArray[np.float64], alpha: float, delta: float, start_errors: int, weighted: bool
) -> int | None:
    """Where the walk starts: the first candidate at which ``start_errors`` errors could still be rejected
    (None: at none). It reads the sample sizes only, never the errors."""
    from scipy.stats import binom  # calibration-time only

    could_reject = binom_cdf(start_errors, n, alpha) if weighted else binom.cdf(start_errors, n, alpha)
    testable = np.flatnonzero(could_reject <= delta)
    return int(testable[0]) if testable.size else None


def _walk(first: int | None, p_values: NDArray[np.float64], delta: float) -> NDArray[np.int64]:
    """Fixed-sequence testing from ``first`` on each row of ``p_values`` (``(labelings, candidates)``): per row, the
    index of the last candidate passed before the first p-value above ``delta``, or -1 where nothing passed."""
    if first is None:
        return np.full(p_values.shape[0], -1)
    tail = p_values[:, first:] > delta
    passed = np.where(tail.any(axis=1), tail.argmax(axis=1), tail.shape[1])  # tests passed in a row
    return np.where(passed > 0, first + passed - 1, -1)


def _ltt(
    conf: NDArray[np.float64],
    wrong: NDArray[np.bool_],
    alpha: float,
    delta: float,
    grid: NDArray[np.float64],
    start_errors: int = 0,
    weights: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Fixed-sequence LTT on one group; ``grid`` sorted high to low. Returns the group's facts."""
    n_rows, n, k, p_values = _p_values(conf, wrong, alpha, grid, weights)
    chosen = int(_walk(_first_testable(n, alpha, delta, start_errors, weights is not None), p_values[None], delta)[0])
    met = chosen >= 0
    i = chosen if met else 0
    threshold = float(grid[i]) if met else 1.0
    n_auto = int(n_rows[i]) if met else 0
    k_auto = (int(k[i]) if weights is None else float(k[i])) if met else 0
    facts: dict[str, Any] = {
        "threshold": threshold,
        "met": met,
        "alpha": alpha,
        "delta": delta,
        "n": int(conf.size),
        "n_auto": n_auto,
        "errors": k_auto,
        "p_value": float(p_values[i]) if met else None,
        "coverage": n_auto / conf.size if conf.size else 0.0,
        "error": k_auto / n_auto if n_auto and weights is None else None,
    }
    if weights is not None:  # errors and error are the weighted ones, on n_eff
        facts.update(n_eff=float(n[i]) if met else 0.0, error=float(k[i] / n[i]) if met and n[i] > 0 else None)
    return facts


def _start_errors(value: int | Mapping[str, int]) -> dict[str, int]:
    """``start_errors`` as one whole number >= 0 per predicted label."""
    per_label = dict(value) if isinstance(value, Mapping) else {SAFE: value, UNSAFE: value}
    if set(per_label) != {SAFE, UNSAFE}:
        raise CalibrationError(f"start_errors per label needs {SAFE!r} and {UNSAFE!r}, got {sorted(per_label)}")
    for label, s in per_label.items():
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise CalibrationError(f"start_errors must be a whole number >= 0, got {s!r} for {label}")
    return per_label


class _Groups:
    """The groups a walk runs on (``safe``/``unsafe``: the rows of that predicted label; ``all``), read from the
    scores alone: per group its rows' confidences, candidate thresholds (high to low) and weights.
    :meth:`wrong` adds the labels."""

    def __init__(
        self, p: NDArray[np.float64], candidates: NDArray[np.float64] | None, weights: NDArray[np.float64] | None
    ) -> None:
        conf, self.pred_unsafe = confidence(p), p >= 0.5
        self.masks = {SAFE: ~self.pred_unsafe, UNSAFE: self.pred_unsafe, "all": np.ones(p.size, dtype=bool)}
        self.rows: dict[str, tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]] = {}
        for name, mask in self.masks.items():
            values = np.unique(np.append(conf[mask], 1.0)) if candidates is None else np.unique(candidates)
            self.rows[name] = (conf[mask], values[::-1], None if weights is None else weights[mask])

    def wrong(self, name: str, y: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which of the group's rows the 0.5 boundary gets wrong under labels ``y`` (``(rows,)``, or
        ``(draws, rows)`` for several labelings)."""
        return (self.pred_unsafe != (y == 1))[..., self.masks[name]]


def risk_controlled_thresholds(
    p_unsafe: ArrayLike,
    labels: ArrayLike,
    target_error: float = 0.05,
    delta: float = 0.1,
    per_label: bool = True,
    target_error_unsafe: float | None = None,
    grid: ArrayLike | None = None,
    start_errors: int | Mapping[str, int] = 0,
    sample_weight: ArrayLike | None = None,
) -> Thresholds:
    """Thresholds whose auto-decided error is <= ``target_error`` with probability >= 1 - ``delta``.

    Learn-Then-Test with fixed-sequence testing (see the module docstring). Calibration data
    must be held out from anything used to fit the calibrator or choose the model.

    Parameters
    ----------
    p_unsafe, labels : array_like
        Calibrated P(unsafe) in [0, 1] and 0/1 gold labels (1 = unsafe) of a held-out set.
    target_error : float, default 0.05
        alpha: the tolerated error rate among auto-decided (predicted-safe, if ``per_label``) examples.
    delta : float, default 0.1
        Tolerated probability that the guarantee fails (split ``delta / 2`` per label if ``per_label``).
    per_label : bool, default True
        Certify predicted-safe and predicted-unsafe predictions separately (Bonferroni).
    target_error_unsafe : float, optional
        alpha for predicted-unsafe examples (default ``target_error``); needs ``per_label``.
    grid : array_like, optional
        Candidate thresholds in [0.5, 1]; default: every calibration confidence plus 1.0.
    start_errors : int or {"safe": int, "unsafe": int}, default 0
        The walk starts at the first candidate where this many errors could still be rejected (module
        docstring); fix it before looking at these labels (e.g. with :func:`choose_start_errors` on
        other rows).
    sample_weight : array_like, optional
        Per-row weights (e.g. ``1 / p`` for reviewed audit samples drawn with probability ``p``): each
        candidate's test then takes the weighted error share on the Kish effective sample size
        ``(sum w)^2 / sum w^2`` (:func:`binom_cdf` at real arguments). Exact when the weights are equal; an
        approximation otherwise (docs/review.md). None: the unweighted test, unchanged.

    Returns
    -------
    Thresholds
        ``method="risk_controlled"``; a label with no certified threshold gets 1.0, is listed
        in ``escalate_all`` and ``details["flags"]`` says "no threshold met the target: everything escalates".
    """
    p, y = check_calibration_set(p_unsafe, labels, need_both_classes=False)
    alpha_safe, alpha_unsafe, delta = _targets(target_error, target_error_unsafe, delta, per_label)
    starts = _start_errors(start_errors)
    candidates = _grid(grid)
    weights = None if sample_weight is None else _weights(sample_weight, p.size)
    walked = _Groups(p, candidates, weights)

    def group(name: str, alpha: float, level: float, start: int) -> dict[str, Any]:
        conf, values, w = walked.rows[name]
        return {**_ltt(conf, walked.wrong(name, y), alpha, level, values, start, w), "start_errors": start}

    if per_label:
        groups = {
            SAFE: group(SAFE, alpha_safe, delta / 2.0, starts[SAFE]),
            UNSAFE: group(UNSAFE, alpha_unsafe, delta / 2.0, starts[UNSAFE]),
        }
        safe_t, unsafe_t = groups[SAFE]["threshold"], groups[UNSAFE]["threshold"]
        failed = [label for label in (SAFE, UNSAFE) if not groups[label]["met"]]
    else:
        groups = {"all": group("all", alpha_safe, delta, max(starts.values()))}
        safe_t = unsafe_t = groups["all"]["threshold"]
        failed = [] if groups["all"]["met"] else [SAFE, UNSAFE]
    flags = [f"{name}: {NO_THRESHOLD_FLAG}" for name, g in groups.items() if not g["met"]]
    details: dict[str, Any] = {
        "target_error": {SAFE: alpha_safe, UNSAFE: alpha_unsafe},
        "delta": delta,
        "per_label": per_label,
        "correction": "bonferroni (delta / 2 per label)" if per_label else "none",
        "grid": "calibration confidences + 1.0" if candidates is None else f"{candidates.size} given values",
        "start_errors": starts,
        "n": int(p.size),
        "weighted": weights is not None,
        "groups": groups,
        "flags": flags,
    }
    result = Thresholds(safe_t, unsafe_t, "risk_controlled", details, tuple(failed))
    details["calibration"] = coverage_and_error(p, y, result)
    return result


def _targets(
    target_error: float, target_error_unsafe: float | None, delta: float, per_label: bool
) -> tuple[float, float, float]:
    """(alpha safe, alpha unsafe, delta), checked."""
    alpha_safe = _check_rate(target_error, "target_error")
    delta = _check_rate(delta, "delta")
    if target_error_unsafe is not None and not per_label:
        raise CalibrationError("target_error_unsafe needs per_label=True; drop it or set per_label=True")
    alpha_unsafe = (
        alpha_safe if target_error_unsafe is None else _check_rate(target_error_unsafe, "target_error_unsafe")
    )
    return alpha_safe, alpha_unsafe, delta


def _grid(grid: ArrayLike | None) -> NDArray[np.float64] | None:
    """Candidate thresholds as given (checked), or None for the calibration confidences."""
    candidates = None if grid is None else check_scores(grid, "grid")
    if candidates is not None and (candidates.size == 0 or np.any(candidates < 0.5)):
        raise CalibrationError("grid must hold at least one threshold, all in [0.5, 1]")
    return candidates


def _weights(sample_weight: ArrayLike, n: int) -> NDArray[np.float64]:
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.size != n or not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise CalibrationError(f"sample_weight needs {n} finite weights >= 0, one per row")
    return w


START_ERROR_CHOICES: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 8)


def choose_start_errors(
    p_unsafe: ArrayLike,
    labels: ArrayLike,
    *,
    target_error: float,
    delta: float,
    target_error_unsafe: float | None = None,
    choices: Sequence[int] = START_ERROR_CHOICES,
    sample_weight: ArrayLike | None = None,
) -> dict[str, int]:
    """Per predicted label, the ``start_errors`` whose walk auto-decides the most of *these* rows.

    Run it on rows the thresholds will not be chosen on (the calibrator's own rows): the choice then
    depends on the threshold rows' confidences only, never on their labels, and the guarantee of
    :func:`risk_controlled_thresholds` on those rows is unchanged. Ties go to the smaller value.
    """
    p, y = check_calibration_set(p_unsafe, labels, need_both_classes=False)
    walks = _StartWalks(p, target_error, target_error_unsafe, delta, choices, sample_weight)
    return _most_covering(walks.covered(y), choices)


def label_free_start_errors(
    p_unsafe: ArrayLike,
    *,
    target_error: float,
    delta: float,
    target_error_unsafe: float | None = None,
    choices: Sequence[int] = START_ERROR_CHOICES,
    sample_weight: ArrayLike | None = None,
    draws: int = 256,
    seed: int = 0,
) -> dict[str, int]:
    """Per predicted label, the ``start_errors`` that auto-decides the most rows when each row's label is drawn
    from its own ``p_unsafe`` (``draws`` seeded draws, coverage summed), never from real labels.

    For thresholds chosen on the calibrator's own rows (``guardcal calibrate --threshold-rows all``), where no
    other labelled rows are left to choose on: pass the model's raw P(unsafe), which were fixed before these
    rows' labels were seen, so the choice cannot depend on them. Ties go to the smaller value.

    ``draws``: 256 by default (about 0.02 s for 300 rows). With 16 the pick changed with the seed: on one guard's
    calibration rows 3 seeds in 30 certified nothing; with 256 all 30 certified the same threshold, and on the
    simulation the walk auto-decided 37.9% of the population instead of 30.8% (``benchmarks/start_rule.py``).
    """
    p = check_scores(p_unsafe, "p_unsafe")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise CalibrationError(f"draws must be a whole number >= 1, got {draws!r}")
    walks = _StartWalks(p, target_error, target_error_unsafe, delta, choices, sample_weight)
    rng = np.random.default_rng(seed)
    total: dict[int, dict[str, float]] = {s: {SAFE: 0.0, UNSAFE: 0.0} for s in choices}
    for done in range(0, draws, _DRAWS_AT_ONCE):  # draw by draw, the same random stream
        drawn = (rng.random((min(_DRAWS_AT_ONCE, draws - done), p.size)) < p).astype(np.int64)
        for s, covered in walks.covered(drawn).items():
            for label in (SAFE, UNSAFE):
                total[s][label] += covered[label]
    return _most_covering(total, choices)


_DRAWS_AT_ONCE = 64  # labelings walked together: 64 x rows floats per array


class _StartWalks:
    """The per-label walks of :func:`risk_controlled_thresholds` from each ``start_errors`` in ``choices``, on
    fixed scores: the groups, sample sizes and where each start's walk begins are read once, from the scores;
    :meth:`covered` adds labels (real or drawn) and walks."""

    def __init__(
        self,
        p: NDArray[np.float64],
        target_error: float,
        target_error_unsafe: float | None,
        delta: float,
        choices: Sequence[int],
        sample_weight: ArrayLike | None,
    ) -> None:
        alpha_safe, alpha_unsafe, self.delta = _targets(target_error, target_error_unsafe, delta, per_label=True)
        self.alphas = {SAFE: alpha_safe, UNSAFE: alpha_unsafe}
        self.groups = _Groups(p, None, None if sample_weight is None else _weights(sample_weight, p.size))
        self.first: dict[str, dict[int, int | None]] = {}
        for label, alpha in self.alphas.items():
            conf, values, w = self.groups.rows[label]
            _, n, _ = _counts(conf, np.zeros(conf.size, dtype=bool), values, w)  # sample sizes need no labels
            self.first[label] = {s: _first_testable(n, alpha, self.delta / 2.0, s, w is not None) for s in choices}

    def covered(self, y: NDArray[np.int64]) -> dict[int, dict[str, float]]:
        """Rows auto-decided per start and predicted label under labels ``y``: ``(rows,)``, or ``(draws, rows)``
        for several labelings, whose counts are summed."""
        labelings = np.atleast_2d(y)
        covered: dict[int, dict[str, float]] = {s: {} for s in self.first[SAFE]}
        for label, alpha in self.alphas.items():
            conf, values, w = self.groups.rows[label]
            n_rows, _, _, p_values = _p_values(conf, self.groups.wrong(label, labelings), alpha, values, w)
            for s, first in self.first[label].items():
                chosen = _walk(first, p_values, self.delta / 2.0)
                covered[s][label] = float(np.where(chosen >= 0, n_rows[np.maximum(chosen, 0)], 0).sum())
        return covered


def _most_covering(covered: Mapping[int, Mapping[str, float]], choices: Sequence[int]) -> dict[str, int]:
    """Per label, the choice covering the most rows (the first of the largest in ``choices`` order)."""
    return {label: max(choices, key=lambda s: (covered[s][label], -choices.index(s))) for label in (SAFE, UNSAFE)}
