"""The prompt a scorer renders, from a prompt profile (``core.profiles``), and its fingerprint.

:class:`PromptTemplate` is a profile run in one mode ("direct" or "reasoning"), bound to the
tokenizer when the profile renders with the model's chat template. The default profile is the
paper's content-moderation prompt (arXiv 2601.13284, Appendix A): a safety-classification
instruction, then ``Input:`` / ``"<input>"`` / ``Classification:``, byte-identical to guardcal
before profiles existed.

Every turn's text is quoted as the profile says (``core.quoting``): JSON-string encoding by
default, so an input can never close its quote, start a new line such as ``Classification: Safe``
or a forged turn, or open/close a reasoning block.

The fingerprint records everything that changes a score: the profile's content, the label words,
the mode and how long inputs are split into windows (``core.windows``), so a calibrator is never
served with another prompt. The default profile keeps the fingerprint format of the time before
profiles (:func:`legacy_payload`), so bundles fitted then (the shipped one) stay valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from guardcal.core.conversation import Conversation
from guardcal.core.profiles import (
    THINK_CLOSE,
    THINK_OPEN,
    PromptProfile,
    content_sha,
    default_profile,
    with_instruction,
)
from guardcal.core.quoting import quote_json
from guardcal.core.windows import WindowPolicy
from guardcal.errors import ConfigError

Mode = Literal["direct", "reasoning"]
MODES: tuple[Mode, ...] = ("direct", "reasoning")
Item = str | Conversation

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
#: content hash of the built-in default profile: a profile with exactly this content keeps the
#: fingerprint format of the time before profiles (the shipped bundle's ``sha256:defe666669c2991d``)
LEGACY_DEFAULT_CONTENT = "11e1c5a61bc6ca3cc5cbb229348fe5fd540308d9f05d250c827e54c1e64aa659"

__all__ = ["ANSWER_PREFIX", "INSTRUCTION", "THINK_CLOSE", "THINK_OPEN", "PromptTemplate", "quote_input"]


def quote_input(text: str) -> str:
    """Encode ``text`` as one JSON string literal that cannot break the prompt (``json`` quoting)."""
    return quote_json(text)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt profile in one mode; ``instruction`` replaces the profile's policy text when given."""

    mode: Mode = "direct"
    instruction: str | None = None
    profile: PromptProfile | None = None
    tokenizer: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown prompt mode {self.mode!r}; use one of {MODES}")
        profile = self.profile or default_profile()
        if self.instruction is not None and self.instruction != profile.instruction:
            profile = with_instruction(profile, self.instruction)
        object.__setattr__(self, "profile", profile)
        object.__setattr__(self, "instruction", profile.instruction)
        profile.rule(self.mode)  # a profile without a rule for this mode is refused here

    @classmethod
    def for_profile(cls, profile: PromptProfile, reasoning: bool | None = None) -> PromptTemplate:
        """``profile`` in its effective mode (``reasoning`` asked for, or the profile's own mode)."""
        return cls(mode=profile.effective_mode(reasoning), profile=profile)  # type: ignore[arg-type]

    @property
    def spec(self) -> PromptProfile:
        assert self.profile is not None
        return self.profile

    @property
    def reasoning(self) -> bool:
        return self.mode == "reasoning"

    def bind(self, tokenizer: Any) -> PromptTemplate:
        """This template rendering with ``tokenizer`` (profiles that use the model's chat template need it)."""
        return replace(self, tokenizer=tokenizer)

    def render(self, item: Item) -> str:
        """The full prompt for a text or a conversation; the model continues after it.

        Direct mode ends with the decision prefix (``Classification:``) so the next token is the
        decision token. Reasoning mode ends with ``<think>`` and the model writes its reasoning,
        ``</think>``, then ``Classification: <label>``.
        """
        return self.spec.render(item, self.mode, self.tokenizer)

    def decision_suffix(self) -> str:
        """Text appended after the reasoning to reach the decision position."""
        return self.spec.decision_suffix(self.mode)

    def fingerprint(self, label_surfaces: tuple[str, ...] | None = None, windows: WindowPolicy | None = None) -> str:
        """A stable hash of the profile's content, the label words, the mode and the window policy.

        ``windows`` is how inputs are split for scoring (``core.windows``; default: 1024-token
        windows): its budget, overlap and deciding rule change scores, so they are part of the
        prompt a calibration was fitted with. Its ``max_windows`` cap is not (it changes no score).
        """
        labels = list(label_surfaces) if label_surfaces is not None else list(self.spec.surfaces().values())
        policy = (windows or WindowPolicy()).describe()
        if content_sha(self.spec) == LEGACY_DEFAULT_CONTENT:
            payload = legacy_payload(self, labels, policy)
        else:
            payload = {
                "format": "profile-v2",
                "profile": self.spec.canonical(),
                "mode": self.mode,
                "labels": labels,
                "windows": policy,
            }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


def legacy_payload(template: PromptTemplate, labels: list[str], windows: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint payload of guardcal before prompt profiles (used for the default profile only)."""
    rules = dict(template.spec.rules)
    return {
        "instruction": template.spec.instruction,
        "direct_rule": rules["direct"],
        "reasoning_rule": rules["reasoning"],
        "answer_prefix": template.spec.decision_prefix,
        "think": list(template.spec.think),
        "quoting": "json-v1",
        "mode": template.mode,
        "labels": labels,
        "layout": template.render("{input}"),
        "windows": windows,
    }
