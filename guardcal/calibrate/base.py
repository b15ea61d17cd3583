"""The calibrator interface, input checks, the JSON registry and shared helpers.

A calibrator maps ``p_unsafe`` (P(unsafe) renormalised over the two labels, in [0, 1])
to a calibrated P(unsafe). Parameters live in ``__init__``; ``fit`` sets attributes ending
in ``_``; ``to_dict`` / :func:`calibrator_from_dict` round-trip through plain JSON (no
pickle), and ``predict`` uses only the stored numbers (numpy only), so a reloaded
calibrator predicts bit-identically. scikit-learn / scipy are needed by ``fit`` only.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from guardcal.errors import CalibrationError, NotFittedError

FloatArray = NDArray[np.float64]
METHODS: tuple[str, ...] = ("platt", "isotonic", "temperature")
_REGISTRY: dict[str, type[Calibrator]] = {}


def _as_vector(values: ArrayLike, name: str) -> FloatArray:
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{name} is not numeric ({exc}); pass an array of numbers") from None
    if arr.ndim != 1:
        raise CalibrationError(f"{name} has shape {arr.shape}; pass a 1-D array (one value per example)")
    return arr


def check_scores(scores: ArrayLike, name: str = "scores") -> FloatArray:
    """Validate P(unsafe) scores: a 1-D array of finite values in [0, 1] (may be empty)."""
    arr = _as_vector(scores, name)
    if (bad := int(np.count_nonzero(~np.isfinite(arr)))) > 0:
        raise CalibrationError(f"{name} has {bad} NaN/inf value(s); drop or repair those examples first")
    if (bad := int(np.count_nonzero((arr < 0.0) | (arr > 1.0)))) > 0:
        raise CalibrationError(f"{name} has {bad} value(s) outside [0, 1]; pass p_unsafe (a probability), not logits")
    return arr


def check_calibration_set(
    scores: ArrayLike, labels: ArrayLike, *, need_both_classes: bool = True
) -> tuple[FloatArray, NDArray[np.int64]]:
    """Validate a calibration set; return ``(scores, labels)`` as float64 / int64 arrays.

    Raises :class:`CalibrationError` for an empty set, a length mismatch, NaN/inf or
    out-of-range scores, labels not 0/1, or (``need_both_classes``) a single class.
    """
    s, y = check_scores(scores), _as_vector(labels, "labels")
    if s.size == 0:
        raise CalibrationError("the calibration set is empty; pass at least one safe and one unsafe example")
    if s.size != y.size:
        raise CalibrationError(f"scores has {s.size} values but labels has {y.size}; pass one label per score")
    if (bad := int(np.count_nonzero((y != 0) & (y != 1)))) > 0:
        raise CalibrationError(f"labels has {bad} value(s) not in {{0, 1}}; pass 0/1 (1 = unsafe) or bools")
    if need_both_classes and (n_unsafe := int(y.sum())) in (0, y.size):
        raise CalibrationError(
            f"only one class present: all {y.size} labels are {'unsafe' if n_unsafe else 'safe'!r}; "
            "calibration needs both classes, so add examples of the missing class to the calibration set"
        )
    return s, y.astype(np.int64)


def check_weights(sample_weight: ArrayLike | None, labels: NDArray[np.int64]) -> FloatArray | None:
    """Validate per-example weights (None: all 1): finite, >= 0, one per label, each class weighing > 0."""
    if sample_weight is None:
        return None
    w = _as_vector(sample_weight, "sample_weight")
    if w.size != labels.size:
        raise CalibrationError(f"sample_weight has {w.size} values but labels has {labels.size}; pass one per example")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise CalibrationError("sample_weight must be finite and >= 0 (e.g. 1 / sampling probability)")
    if float(w[labels == 1].sum()) <= 0.0 or float(w[labels == 0].sum()) <= 0.0:
        raise CalibrationError("sample_weight gives one class no weight; calibration needs weight on both classes")
    return w


def confidence(p: ArrayLike) -> FloatArray:
    """Top-label confidence of a calibrated P(unsafe): ``max(p, 1 - p)`` (always >= 0.5)."""
    return np.maximum(arr := np.asarray(p, dtype=np.float64), 1.0 - arr)


def logit(p: FloatArray, eps: float) -> FloatArray:
    """``log(p / (1 - p))`` after clipping ``p`` to ``[eps, 1 - eps]``."""
    return np.log(q := np.clip(p, eps, 1.0 - eps)) - np.log1p(-q)


def sigmoid(z: FloatArray) -> FloatArray:
    """Numerically stable logistic function (numpy only, no overflow warnings)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0.0, 1.0, e) / (1.0 + e)


class Calibrator(ABC):
    """Maps P(unsafe) scores to calibrated P(unsafe); scikit-learn style.

    Subclasses set ``method``, name their fitted floats / 1-D float arrays in ``_fitted_scalars`` /
    ``_fitted_arrays``, implement ``_fit`` and ``_predict`` and may extend ``_check_params``.
    """

    method: ClassVar[str]
    _fitted_scalars: ClassVar[tuple[str, ...]] = ()
    _fitted_arrays: ClassVar[tuple[str, ...]] = ()

    def fit(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None) -> Self:
        """Fit on P(unsafe) ``scores`` and 0/1 ``labels`` (1 = unsafe); return ``self``.

        ``sample_weight`` weighs each example in the fitted loss (e.g. ``1 / p`` for a reviewed audit sample
        drawn with probability ``p``); None fits exactly as unweighted. Raises :class:`CalibrationError` for
        an unusable set (:func:`check_calibration_set`, :func:`check_weights`) or a failed fit.
        """
        s, y = check_calibration_set(scores, labels)
        self._fit(s, y, check_weights(sample_weight, y))
        self._check_params()
        return self

    def predict(self, scores: ArrayLike) -> FloatArray:
        """Calibrated P(unsafe) for ``scores``, a float64 array in [0, 1] with no NaN.

        Raises :class:`NotFittedError` before ``fit``, :class:`CalibrationError` for NaN/inf or out-of-range scores.
        """
        self._require_fitted()
        out = self._predict(check_scores(scores))
        return np.clip(np.nan_to_num(out, nan=0.5), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., "params": {...}}`` with JSON-safe values (floats, lists, bools)."""
        self._require_fitted()
        params: dict[str, Any] = {name: getattr(self, name) for name in _init_names(type(self))}
        params.update({name: float(getattr(self, name)) for name in self._fitted_scalars})
        params.update({name: [float(v) for v in getattr(self, name)] for name in self._fitted_arrays})
        return {"method": self.method, "params": params}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """Rebuild a fitted calibrator from the ``params`` of :meth:`to_dict`."""
        init, fitted = _init_names(cls), cls._fitted_scalars + cls._fitted_arrays
        missing = [k for k in fitted if k not in params]
        unknown = sorted(set(params) - set(init) - set(fitted))
        if missing or unknown:
            raise CalibrationError(f"{cls.method} params: missing {missing}, unknown {unknown}; use to_dict() output")
        obj = cls(**{k: params[k] for k in init if k in params})
        for name in fitted:
            setattr(obj, name, _stored_number(cls.method, name, params[name], name in cls._fitted_arrays))
        obj._check_params()
        return obj

    def keeps_score_order(self) -> bool:
        """True when the fitted map is strictly increasing in the raw score, with no fitted flat steps: it
        orders inputs exactly as the raw score does (ties only where the raw score ties, inside a fixed
        clip of the score such as Platt's ``1e-6`` / ``1 - 1e-6``, or where float64 rounds two outputs
        together). Then a threshold on the
        calibrated confidence picks a set of inputs by raw-score rank alone, and the risk-controlled
        thresholds may be chosen on the calibrator's own rows (``guardcal calibrate --threshold-rows all``).
        False by default."""
        self._require_fitted()
        return False

    def _require_fitted(self) -> None:
        if not all(hasattr(self, name) for name in self._fitted_scalars + self._fitted_arrays):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit() or use calibrator_from_dict()")

    def _check_params(self) -> None:
        """Raise CalibrationError if a fitted value is not finite (subclasses add their own checks)."""
        for name in self._fitted_scalars + self._fitted_arrays:
            if not np.all(np.isfinite(getattr(self, name))):
                raise CalibrationError(f"{self.method}: fitted {name} is not finite; check the calibration data")

    @abstractmethod
    def _fit(self, scores: FloatArray, labels: NDArray[np.int64], weights: FloatArray | None = None) -> None:
        """Set the fitted attributes from validated inputs (``weights`` None: unweighted)."""

    @abstractmethod
    def _predict(self, scores: FloatArray) -> FloatArray:
        """Map validated scores with the fitted attributes only (numpy only)."""


def _stored_number(method: str, name: str, value: Any, array: bool) -> Any:
    items = (list(value) if isinstance(value, (list, tuple)) else []) if array else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in items):
        kind = "a non-empty list of finite numbers" if array else "a finite number"
        raise CalibrationError(f"{method} param {name!r} must be {kind}, got {value!r}; re-fit the calibrator")
    return np.asarray(items, dtype=np.float64) if array else float(value)


def _init_names(cls: type) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(n for n, p in inspect.signature(cls).parameters.items() if p.kind in kinds)


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: make ``cls`` loadable by :func:`calibrator_from_dict` under ``cls.method``."""
    _REGISTRY[cls.method] = cls
    return cls


def _lookup(method: object) -> type[Calibrator]:
    for name in METHODS:  # the built-ins register themselves on import
        importlib.import_module(f"guardcal.calibrate.{name}")
    if (key := method.strip().lower() if isinstance(method, str) else None) not in _REGISTRY:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def make_calibrator(method: str) -> Calibrator:
    """A new, unfitted calibrator for ``method`` (one of :data:`METHODS`, case-insensitive).

    Raises :class:`CalibrationError` naming the known methods if ``method`` is unknown.
    """
    return _lookup(method)()


def calibrator_from_dict(d: Mapping[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from ``to_dict()`` output (e.g. after ``json.loads``).

    Raises :class:`CalibrationError` for a non-mapping, missing keys, unknown method or bad params.
    """
    if not isinstance(d, Mapping) or "method" not in d or not isinstance(d.get("params"), Mapping):
        raise CalibrationError("a calibrator dict needs 'method' and 'params' keys; pass what to_dict() returned")
    return _lookup(d["method"]).from_params(d["params"])
