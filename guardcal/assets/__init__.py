"""Artifacts shipped inside the package: the default adapter and calibration bundle.

``--adapter default`` and ``--bundle default`` resolve here. Both are produced by
this project's own training and calibration runs (see docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent
DEFAULT_ADAPTER = ASSETS / "default_adapter"
DEFAULT_BUNDLE = ASSETS / "default_bundle.json"
DEFAULT = "default"
