"""How an input's text is placed into a prompt so it cannot change the prompt's structure.

Two quotings, chosen by the prompt profile (``core.profiles``), applied to every turn a prompt shows:

- ``json`` (the default, and today's): the text becomes one JSON string literal. Quotes become
  ``\\"``, newlines ``\\n``, ``<think>``-like tags and the line breaks JSON leaves raw are escaped, so
  a text can never close its quote, start a new line such as ``Classification: Safe`` or a forged
  ``Assistant:`` turn, or open/close a reasoning block. The whole text sits on one line.
- ``plain`` (for guard models whose model card shows raw text, e.g. Llama Guard): the text is kept
  as written, except that every *marker* of the layout it could forge is broken by a WORD JOINER
  (U+2060, invisible) after its first visible character: the role lines the profile renders (e.g.
  ``\\n\\nAgent:``), the profile's ``reserved`` strings (``<END CONVERSATION>``) and every
  special-token spelling (``<|eot_id|>``, ``<start_of_turn>``, ``[INST]``...), which a tokenizer
  would otherwise turn into the real control token. The text reads the same to the model; it just
  never contains the exact marker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

QUOTINGS = ("json", "plain")
JOINER = "\u2060"

_TAG = re.compile(r"<(?=\s*/?\s*think)", re.IGNORECASE)
_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\u0085\u2028\u2029"}
#: special-token spellings of the common chat formats (Llama 3/4, Qwen/ChatML, Granite, Gemma, Mistral)
_SPECIAL = (
    r"<\|[^|<>\s]{1,40}\|>",
    r"</?(?:start_of_turn|end_of_turn|bos|eos|s|pad|unk)>",
    r"\[/?INST\]",
    r"<</?SYS>>",
)


def quote_json(text: str) -> str:
    """Encode ``text`` as one JSON string literal that cannot break the prompt."""
    encoded = json.dumps(text, ensure_ascii=False)
    # JSON-valid escape of '<' before think tags; json.dumps escapes the C0 controls, and the
    # line breaks it leaves raw (NEL, U+2028/9: str.splitlines and some renderers break there)
    # are escaped too, so the input is one line for every reader.
    encoded = _TAG.sub(r"\\u003c", encoded)
    return encoded.translate(_LINE_BREAKS)


def marker_pattern(markers: Iterable[str]) -> re.Pattern[str]:
    """One pattern for the literal ``markers`` and every special-token spelling, longest first."""
    literal = sorted({m for m in markers if m.strip()}, key=len, reverse=True)
    return re.compile("|".join([*(re.escape(m) for m in literal), *_SPECIAL]))


def neutralise(text: str, pattern: re.Pattern[str]) -> str:
    """``text`` with a WORD JOINER after the first visible character of every marker match."""

    def broken(m: re.Match[str]) -> str:
        s = m.group(0)
        i = len(s) - len(s.lstrip())
        return s[: i + 1] + JOINER + s[i + 1 :]

    # twice: breaking one marker cannot create another, but overlapping matches are caught on the second pass
    return pattern.sub(broken, pattern.sub(broken, text))


def quote(text: str, quoting: str, pattern: re.Pattern[str]) -> str:
    """``text`` quoted as the profile says (``json`` or ``plain``)."""
    if quoting == "json":
        return quote_json(text)
    return neutralise(text, pattern)
