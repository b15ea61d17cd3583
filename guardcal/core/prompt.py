"""The content-moderation prompt (arXiv 2601.13284, Appendix A) and its fingerprint.

Layout, as in the paper: a safety-classification instruction, then
``Input:`` / ``"<input>"`` / ``Classification:``. The wording of the
instruction is guardcal's reconstruction of the paper's; the fingerprint
records the exact text, and how long inputs are split into windows
(``core.windows``), so a calibrator is never served with another prompt.

The input is JSON-string encoded before it is placed between the quotes:
quotes become ``\\"``, newlines ``\\n`` and ``<think>``-like tags are
escaped, so an input can never close the quote, start a new line such as
``Classification: Safe``, or open/close a reasoning block. The whole input
always sits on the one line between the delimiters.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

from guardcal.core.windows import WindowPolicy

Mode = Literal["direct", "reasoning"]
MODES: tuple[Mode, ...] = ("direct", "reasoning")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_PREFIX = "Classification:"

INSTRUCTION = (
    "You are a content safety classifier. Read the input below and decide "
    "whether it is Safe or Unsafe. Unsafe means it contains or requests "
    "sexual content, hate, harassment, violence, threats, self-harm, or "
    "content that helps someone cause harm. Anything else is Safe."
)
DIRECT_RULE = "Answer with exactly one word: Safe or Unsafe."
REASONING_RULE = (
    f"First think briefly inside {THINK_OPEN} {THINK_CLOSE}, then answer with exactly one word: Safe or Unsafe."
)

_TAG = re.compile(r"<(?=\s*/?\s*think)", re.IGNORECASE)
_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\u0085\u2028\u2029"}


def quote_input(text: str) -> str:
    """Encode ``text`` as one JSON string literal that cannot break the prompt."""
    encoded = json.dumps(text, ensure_ascii=False)
    # JSON-valid escape of '<' before think tags; json.dumps escapes the C0 controls, and the
    # line breaks it leaves raw (NEL, U+2028/9: str.splitlines and some renderers break there)
    # are escaped too, so the input is one line for every reader.
    encoded = _TAG.sub(r"\\u003c", encoded)
    return encoded.translate(_LINE_BREAKS)


@dataclass(frozen=True)
class PromptTemplate:
    """The moderation prompt in one mode ("direct" or "reasoning")."""

    mode: Mode = "direct"
    instruction: str = INSTRUCTION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            from guardcal.errors import ConfigError

            raise ConfigError(f"unknown prompt mode {self.mode!r}; use one of {MODES}")

    @property
    def reasoning(self) -> bool:
        return self.mode == "reasoning"

    def render(self, text: str) -> str:
        """The full prompt for ``text``; the model continues after it.

        Direct mode ends with ``Classification:`` so the next token is the
        decision token. Reasoning mode ends with ``<think>`` and the model
        writes its reasoning, ``</think>``, then ``Classification: <label>``.
        """
        rule = REASONING_RULE if self.reasoning else DIRECT_RULE
        head = f"{self.instruction} {rule}\n\nInput:\n{quote_input(text)}\n\n"
        if self.reasoning:
            return head + THINK_OPEN + "\n"
        return head + ANSWER_PREFIX

    def decision_suffix(self) -> str:
        """Text appended after the reasoning to reach the decision position."""
        return f"\n{THINK_CLOSE}\n{ANSWER_PREFIX}" if self.reasoning else ""

    def fingerprint(
        self, label_surfaces: tuple[str, ...] = ("Safe", "Unsafe"), windows: WindowPolicy | None = None
    ) -> str:
        """A stable hash of the template text, the label set, the mode and the window policy.

        ``windows`` is how inputs are split for scoring (``core.windows``; default: 1024-token
        windows): its budget, overlap and deciding rule change scores, so they are part of the
        prompt a calibration was fitted with. Its ``max_windows`` cap is not (it changes no score).
        """
        payload = {
            "instruction": self.instruction,
            "direct_rule": DIRECT_RULE,
            "reasoning_rule": REASONING_RULE,
            "answer_prefix": ANSWER_PREFIX,
            "think": [THINK_OPEN, THINK_CLOSE],
            "quoting": "json-v1",
            "mode": self.mode,
            "labels": list(label_surfaces),
            "layout": self.render("{input}"),
            "windows": (windows or WindowPolicy()).describe(),
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]
