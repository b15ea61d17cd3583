"""The auto-decision error measured in production, from reviewed audit samples.

Reviews of escalations see only the low-confidence band. To measure the decisions guardcal makes on
its own, the server sends a random share of them for review as well (``guardcal serve --audit-rate
p``): each confident decision is drawn independently with probability ``p``, whatever its input or
label, and a reviewer gives the true label. Per predicted label ``L`` (the label the guard auto-decided,
``allow`` for safe and ``block`` for unsafe), with ``w_i = 1 / p_i`` over the reviewed audit samples:

    error_L = sum_i w_i * wrong_i / sum_i w_i          (the Hajek / ratio estimator)

With one rate ``p`` (the usual case) this is ``wrong / reviewed``, and because the sample is a
Bernoulli sample of the confident decisions it is unbiased for their error rate. Rates that changed
over time (a restart with another ``--audit-rate``) are weighted back by ``1 / p``. The interval is
Clopper-Pearson (exact binomial) on ``wrong`` of ``reviewed``; with unequal weights it is taken on an
effective sample size with ``k = error * n_eff`` (an approximation; exact when the weights are equal):
the smaller of Kish's ``(sum w)^2 / sum w^2`` and Korn & Graubard's ``error (1 - error) / var``, with
``var = sum w^2 (wrong - error)^2 / (sum w)^2`` the ratio estimator's design variance. Kish's size alone
ignores where the errors fall: when the heavily weighted (rarely audited) period is the one with more
errors, its interval under-covered (tests/calibrate/test_review_simulation.py: 91% for a 95% interval
at rates 10% / 2% with errors 1% / 10%; 96% with the smaller size). Assumption: which samples get
reviewed does not depend on their true label (review them all, or a random part); skipped samples that
stay unreviewed for that reason would bias the estimate.

The comparison with the bundle's risk-control target ``alpha_L`` (the ``target_error`` the thresholds
were certified for): ``within`` when the upper bound is <= alpha (the data confirm the target),
``above`` when the lower bound is > alpha (the target is broken), ``unconfirmed`` in between (too few
reviews to tell, or the error sits near alpha).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from guardcal.errors import CalibrationError

Status = Literal["within", "unconfirmed", "above", "no_target"]
DEFAULT_LEVEL = 0.95


def clopper_pearson(errors: float, n: float, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a proportion ``errors / n`` (real ``errors``, ``n`` allowed)."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    if not 0.0 <= errors <= n:
        raise CalibrationError(f"errors must lie in [0, n]; got {errors} of {n}")
    tail = (1.0 - level) / 2.0
    lower = 0.0 if errors <= 0 else float(beta.ppf(tail, errors, n - errors + 1.0))
    upper = 1.0 if errors >= n else float(beta.ppf(1.0 - tail, errors + 1.0, n - errors))
    return lower, upper


@dataclass(frozen=True)
class ErrorEstimate:
    """One predicted label's estimated auto-decision error and how it compares with the target."""

    label: str
    reviewed: int
    wrong: int
    error: float
    lower: float
    upper: float
    level: float
    n_eff: float
    target: float | None
    status: Status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(lower: float, upper: float, target: float | None) -> Status:
    """``within`` (upper <= target), ``above`` (lower > target), else ``unconfirmed``; ``no_target``."""
    if target is None:
        return "no_target"
    if upper <= target:
        return "within"
    return "above" if lower > target else "unconfirmed"


def estimate_error(
    label: str,
    wrong: Iterable[bool],
    probability: Iterable[float],
    *,
    target: float | None = None,
    level: float = DEFAULT_LEVEL,
) -> ErrorEstimate:
    """The weighted error of one label's reviewed audit samples (``wrong[i]``, drawn with ``probability[i]``)."""
    bad = np.asarray(list(wrong), dtype=bool)
    p = np.asarray(list(probability), dtype=np.float64)
    if bad.size == 0 or bad.shape != p.shape:
        raise CalibrationError("estimate_error needs one sampling probability per reviewed sample, and at least one")
    if np.any(~np.isfinite(p)) or np.any(p <= 0.0) or np.any(p > 1.0):
        raise CalibrationError("sampling probabilities must lie in (0, 1]")
    w = 1.0 / p
    error = float(np.sum(w * bad) / np.sum(w))
    n_eff = _effective_size(w, bad, error)
    lower, upper = clopper_pearson(min(n_eff, error * n_eff), n_eff, level)
    return ErrorEstimate(
        label=label,
        reviewed=int(bad.size),
        wrong=int(bad.sum()),
        error=error,
        lower=lower,
        upper=upper,
        level=level,
        n_eff=n_eff,
        target=target,
        status=compare(lower, upper, target),
    )


def _effective_size(w: np.ndarray, bad: np.ndarray, error: float) -> float:
    """``reviewed`` for equal weights; else min(Kish, Korn-Graubard) (the module docstring says why)."""
    if np.allclose(w, w[0]):
        return float(bad.size)  # exact: equal weights
    kish = float(np.sum(w) ** 2 / np.sum(w**2))
    var = float(np.sum(w**2 * (bad - error) ** 2) / np.sum(w) ** 2)
    if var <= 0.0:  # no error, or all wrong
        return kish
    return min(kish, error * (1.0 - error) / var)


def audit_estimates(
    samples: Iterable[tuple[str, str, float]],
    targets: Mapping[str, float] | None = None,
    level: float = DEFAULT_LEVEL,
) -> dict[str, ErrorEstimate]:
    """Per predicted label, the estimate from ``(predicted label, reviewed label, sampling probability)``."""
    by_label: dict[str, tuple[list[bool], list[float]]] = {}
    for predicted, truth, prob in samples:
        wrong, probs = by_label.setdefault(predicted, ([], []))
        wrong.append(predicted != truth)
        probs.append(prob)
    return {
        label: estimate_error(label, wrong, probs, target=(targets or {}).get(label), level=level)
        for label, (wrong, probs) in sorted(by_label.items())
    }


def bundle_targets(thresholds: Mapping[str, Any]) -> dict[str, float]:
    """The risk-control target alpha per label of a ``Thresholds.to_dict()`` (empty for fixed thresholds)."""
    target = (thresholds.get("details") or {}).get("target_error")
    if thresholds.get("method") != "risk_controlled" or not isinstance(target, Mapping):
        return {}
    return {str(k): float(v) for k, v in target.items() if isinstance(v, (int, float))}
