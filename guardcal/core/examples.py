"""The two labels (``SAFE``, ``UNSAFE``) and ``Example``, one labelled input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

SAFE: Final = "safe"
UNSAFE: Final = "unsafe"
LABELS: Final = (SAFE, UNSAFE)


@dataclass(frozen=True)
class Example:
    """One labelled input: ``label`` is ``"safe"`` or ``"unsafe"``.

    A conversation row also has ``messages`` (OpenAI-shaped turns); its ``text`` is then the last
    turn's text, and the prompt profile decides which turn is judged."""

    id: str
    text: str
    label: str
    messages: tuple[dict[str, Any], ...] | None = None
