"""Small shared value types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

SAFE: Final = "safe"
UNSAFE: Final = "unsafe"
LABELS: Final = (SAFE, UNSAFE)


@dataclass(frozen=True)
class Example:
    """One labelled input: ``label`` is ``"safe"`` or ``"unsafe"``."""

    id: str
    text: str
    label: str
