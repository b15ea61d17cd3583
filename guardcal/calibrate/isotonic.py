"""Isotonic calibration: the best non-decreasing step fit of P(unsafe) on the score.

The fit is scikit-learn's ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)``;
only its knots (``X_thresholds_`` / ``y_thresholds_``) are kept, and ``predict`` is
``np.interp`` over them, the same linear interpolation scikit-learn uses, clipped to the
end values outside the fitted range. The stored knots are the whole model, so a JSON round
trip predicts bit-identically.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from guardcal.calibrate.base import Calibrator, FloatArray, register_calibrator
from guardcal.errors import CalibrationError


@register_calibrator
class IsotonicCalibrator(Calibrator):
    """Non-decreasing piecewise-linear map from ``p_unsafe`` to calibrated P(unsafe).

    Attributes
    ----------
    x_thresholds_ : ndarray of float
        Strictly increasing score knots.
    y_thresholds_ : ndarray of float
        Non-decreasing calibrated P(unsafe) at each knot, in [0, 1].

    Examples
    --------
    >>> cal = IsotonicCalibrator().fit([0.1, 0.4, 0.6, 0.9], [0, 1, 0, 1])
    >>> cal.predict([0.0, 0.5, 1.0]).tolist()
    [0.0, 0.5, 1.0]
    """

    method = "isotonic"
    _fitted_arrays = ("x_thresholds_", "y_thresholds_")

    def _fit(self, scores: FloatArray, labels: NDArray[np.int64], weights: FloatArray | None = None) -> None:
        from sklearn.isotonic import IsotonicRegression  # fit-time only: predict needs numpy alone

        model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
        model.fit(scores, labels.astype(np.float64), sample_weight=weights)
        self.x_thresholds_ = np.asarray(model.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(model.y_thresholds_, dtype=np.float64)

    def _predict(self, scores: FloatArray) -> FloatArray:
        return np.interp(scores, self.x_thresholds_, self.y_thresholds_)

    def _check_params(self) -> None:
        super()._check_params()
        x, y = self.x_thresholds_, self.y_thresholds_
        if x.shape != y.shape:
            raise CalibrationError(
                f"isotonic x_thresholds_ has {x.size} knots but y_thresholds_ has {y.size}; re-fit the calibrator"
            )
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or np.any((y < 0) | (y > 1)):
            raise CalibrationError(
                "isotonic knots must have strictly increasing x and non-decreasing y in [0, 1]; re-fit the calibrator"
            )
