"""Reliability diagrams as PNG files.

matplotlib is imported lazily inside :func:`plot_reliability`, so importing this
module stays cheap and works where matplotlib is missing. Figures are drawn on an
Agg canvas that is never registered with pyplot, so nothing leaks into (or
changes the backend of) an interactive session.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from guardcal.calibrate.metrics import ReliabilityCurve, ece, ece_equal_width, reliability_curve

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9-]+")


def slug(name: str) -> str:
    """Turn a dataset key into a safe file-name stem.

    Every run of characters other than ASCII letters, digits and ``-`` becomes a
    single ``_``; leading/trailing ``_`` and ``-`` are dropped. An empty result
    becomes ``"dataset"``.

    Parameters
    ----------
    name : str
        A dataset key such as ``"openai-moderation:test"`` or ``"jsonl:/a/b.jsonl"``.

    Returns
    -------
    str
        A stem safe to use in any file name.

    Examples
    --------
    >>> slug("openai-moderation:test")
    'openai-moderation_test'
    >>> slug("jsonl:/a/b.jsonl")
    'jsonl_a_b_jsonl'
    """
    return _UNSAFE_CHARS.sub("_", name).strip("_-") or "dataset"


def plot_reliability(
    confidence: ArrayLike,
    correct: ArrayLike,
    path: str | os.PathLike[str],
    title: str,
    n_bins: int = 15,
) -> Path:
    """Write a reliability diagram with a confidence histogram below it as a PNG.

    The top panel shows accuracy against mean confidence for equal-mass bins
    (the bins of :func:`~guardcal.calibrate.metrics.ece`), the diagonal of
    perfect calibration and the gap between the two; the legend reports the
    equal-mass and equal-width ECE. The bottom panel is a histogram of the
    confidences over 20 equal-width bins on [0, 1].

    Parameters
    ----------
    confidence, correct : array_like
        Top-label confidence in [0, 1]; 1 where the prediction was right, else 0.
    path : str or os.PathLike
        Where to write the PNG; missing parent directories are created.
    title : str
        Figure title, e.g. the model and dataset names.
    n_bins : int, default 15
        Number of equal-mass bins in the reliability diagram.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    CalibrationError
        If the inputs are unusable (see :mod:`guardcal.calibrate.metrics`).
    """
    curve = reliability_curve(confidence, correct, n_bins=n_bins, strategy="quantile")
    label = (
        f"ECE {ece(confidence, correct, n_bins=n_bins):.3f} (equal-mass), "
        f"{ece_equal_width(confidence, correct, n_bins=n_bins):.3f} (equal-width)"
    )

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 7.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _draw_reliability(top, curve, title, label)
    _draw_histogram(bottom, np.asarray(confidence, dtype=np.float64))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    fig.clear()
    return out


def _draw_reliability(ax: Axes, curve: ReliabilityCurve, title: str, label: str) -> None:
    """Accuracy bars per equal-mass bin, the gap to mean confidence, and the diagonal."""
    low, high = curve.edges[:, 0], curve.edges[:, 1]
    widths = np.maximum(high - low, 0.01)
    ax.bar(
        low,
        curve.accuracy,
        width=widths,
        align="edge",
        color="#4C72B0",
        alpha=0.35,
        edgecolor="#4C72B0",
        label="accuracy per bin",
    )
    gap_bottom = np.minimum(curve.accuracy, curve.mean_confidence)
    gap_height = np.abs(curve.mean_confidence - curve.accuracy)
    ax.bar(
        low,
        gap_height,
        bottom=gap_bottom,
        width=widths,
        align="edge",
        color="#C44E52",
        alpha=0.3,
        hatch="//",
        edgecolor="#C44E52",
        label="gap to calibration",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.plot(curve.mean_confidence, curve.accuracy, "o-", color="#4C72B0", markersize=4, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)


def _draw_histogram(ax: Axes, conf: np.ndarray) -> None:
    """Histogram of the confidences over 20 equal-width bins on [0, 1]."""
    ax.hist(conf, bins=np.linspace(0.0, 1.0, 21), color="#55A868", edgecolor="white")
    ax.axvline(
        float(conf.mean()),
        color="black",
        linestyle=":",
        linewidth=1,
        label=f"mean confidence {conf.mean():.3f} (n={conf.size})",
    )
    ax.set(xlim=(0, 1), xlabel="confidence", ylabel="count")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
