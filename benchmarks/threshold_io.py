"""Reading and writing for the threshold benchmarks (``start_rule.py``, ``multistart_walk.py``,
``refit_review_split.py``, ``threshold_rows_cv.py``): a guard's calibration rows from a
``guardcal evaluate`` folder, and the result as JSON on stdout and, optionally, in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardcal.calibration_run import rows_from_predictions
from guardcal.core.examples import UNSAFE

FIT = "openai-moderation:calib"


def calibration_rows(folder: Path) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Raw P(unsafe) and 0/1 gold labels (1 = unsafe) of the calibration split, as evaluate scored them."""
    rows = rows_from_predictions(folder, [FIT])[0][FIT]
    p = np.array([r["p_unsafe"] for r in rows])
    return p, np.array([r["label"] == UNSAFE for r in rows], dtype=np.int64)


def emit(result: dict[str, Any], output: Path | None) -> None:
    """Print ``result`` as JSON and write it to ``output`` when given."""
    text = json.dumps(result, indent=2) + "\n"
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    print(text)
