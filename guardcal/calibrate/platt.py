"""Platt scaling: a logistic regression on the logit of the score.

``P(unsafe) = sigmoid(a * logit(s) + b)`` with ``s`` clipped to ``[1e-6, 1 - 1e-6]`` first.
The fit follows Platt (1999): instead of hard 0/1 targets it uses the prior-smoothed targets
``(N+ + 1) / (N+ + 2)`` for unsafe and ``1 / (N- + 2)`` for safe examples, which keeps the
slope finite on separable data and shrinks small sets towards the base rate. scikit-learn's
``LogisticRegression`` takes hard labels only, so every example enters twice, as class 1 with
weight ``t`` and as class 0 with weight ``1 - t``: the weighted log-loss is then exactly the
cross-entropy against the soft target ``t``. The penalty is made negligible (``C = 1e12``). With
``sample_weight`` both entries of an example are multiplied by its weight, and ``N+``/``N-`` are the
classes' summed weights.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from guardcal.calibrate.base import Calibrator, FloatArray, logit, register_calibrator, sigmoid
from guardcal.errors import CalibrationError

EPS = 1e-6


@register_calibrator
class PlattCalibrator(Calibrator):
    """Platt scaling on the two-label logit of ``p_unsafe``.

    Parameters
    ----------
    prior_smoothing : bool, default True
        Fit against Platt's prior-smoothed targets (module docstring) rather than hard 0/1 labels.

    Attributes
    ----------
    a_ : float
        Slope on ``logit(s)``; 1 leaves an already calibrated model unchanged.
    b_ : float
        Intercept; 0 leaves an already calibrated model unchanged.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=2000)
    >>> cal = PlattCalibrator().fit(p, rng.uniform(size=2000) < p)
    >>> bool(abs(cal.a_ - 1) < 0.2 and abs(cal.b_) < 0.2)
    True
    """

    method = "platt"
    _fitted_scalars = ("a_", "b_")

    def __init__(self, prior_smoothing: bool = True) -> None:
        self.prior_smoothing = prior_smoothing

    def _fit(self, scores: FloatArray, labels: NDArray[np.int64], weights: FloatArray | None = None) -> None:
        from sklearn.linear_model import LogisticRegression  # fit-time only: predict needs numpy alone

        self._check_init()
        if weights is None:
            n_pos: float = int(labels.sum())
            n_neg: float = labels.size - n_pos
        else:  # Platt's prior counts become the classes' weights
            n_pos, n_neg = float(weights[labels == 1].sum()), float(weights[labels == 0].sum())
        if self.prior_smoothing:
            target = np.where(labels == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        else:
            target = labels.astype(np.float64)
        z = logit(scores, EPS)
        x = np.concatenate([z, z])[:, None]
        y = np.concatenate([np.ones(z.size, dtype=np.int64), np.zeros(z.size, dtype=np.int64)])
        weight = np.concatenate([target, 1.0 - target])
        if weights is not None:
            weight = weight * np.concatenate([weights, weights])
        keep = weight > 0.0
        model = LogisticRegression(C=1e12, tol=1e-10, max_iter=1000)
        model.fit(x[keep], y[keep], sample_weight=weight[keep])
        self.a_ = float(model.coef_[0, 0])
        self.b_ = float(model.intercept_[0])

    def _predict(self, scores: FloatArray) -> FloatArray:
        return sigmoid(self.a_ * logit(scores, EPS) + self.b_)

    def keeps_score_order(self) -> bool:
        """True for a positive slope (a model whose P(unsafe) ranks the fit rows backwards gets ``a_ <= 0``)."""
        self._require_fitted()
        return self.a_ > 0.0

    def _check_params(self) -> None:
        self._check_init()
        super()._check_params()

    def _check_init(self) -> None:
        if not isinstance(self.prior_smoothing, bool):
            raise CalibrationError(f"prior_smoothing must be True or False, got {self.prior_smoothing!r}")
