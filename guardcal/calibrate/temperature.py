"""Temperature scaling on the two-label logit: ``P(unsafe) = sigmoid(logit(s) / T)``.

``T`` minimises the mean negative log-likelihood of the calibration labels; scipy's bounded
``minimize_scalar`` searches ``log T`` in [-5, 5] (T in about [0.0067, 148]). ``T > 1`` softens
an overconfident model, ``T < 1`` sharpens an underconfident one, and the predicted label never
changes. Scores are clipped to ``[1e-12, 1 - 1e-12]`` before the logit so exact 0/1 stay finite
(a looser clip than Platt's 1e-6, to keep very confident scores apart).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from guardcal.calibrate.base import Calibrator, FloatArray, logit, register_calibrator, sigmoid
from guardcal.errors import CalibrationError

EPS = 1e-12
LOG_T_BOUNDS = (-5.0, 5.0)


@register_calibrator
class TemperatureCalibrator(Calibrator):
    """Temperature scaling of the two-label logit of ``p_unsafe``.

    Attributes
    ----------
    temperature_ : float
        The fitted temperature ``T > 0``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(0, 2, size=4000)
    >>> y = rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))
    >>> cal = TemperatureCalibrator().fit(1 / (1 + np.exp(-3 * z)), y)
    >>> bool(abs(cal.temperature_ - 3) < 0.3)
    True
    """

    method = "temperature"
    _fitted_scalars = ("temperature_",)

    def _fit(self, scores: FloatArray, labels: NDArray[np.int64], weights: FloatArray | None = None) -> None:
        from scipy.optimize import minimize_scalar  # fit-time only: predict needs numpy alone

        signed = np.where(labels == 1, 1.0, -1.0) * logit(scores, EPS)

        def nll(log_t: float) -> float:  # (weighted) mean -log sigmoid(+-z / T)
            losses = np.logaddexp(0.0, -signed * np.exp(-log_t))
            return float(np.mean(losses) if weights is None else np.average(losses, weights=weights))

        result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-8})
        if not result.success or not np.isfinite(result.x):
            raise CalibrationError(
                f"temperature fit failed: scipy says {result.message!r}; check that the scores carry signal "
                "or use method 'platt' or 'isotonic'"
            )
        self.temperature_ = float(np.exp(result.x))

    def _predict(self, scores: FloatArray) -> FloatArray:
        return sigmoid(logit(scores, EPS) / self.temperature_)

    def keeps_score_order(self) -> bool:
        """Always True: ``T > 0`` rescales the logit."""
        self._require_fitted()
        return True

    def _check_params(self) -> None:
        super()._check_params()
        if self.temperature_ <= 0.0:
            raise CalibrationError(f"temperature_ must be > 0, got {self.temperature_!r}; re-fit the calibrator")
