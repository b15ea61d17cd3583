"""A conversation to classify: OpenAI-shaped turns, one of them judged, the ones before it context.

:class:`Conversation` is what a scorer renders instead of a plain text when a request sends
``messages``. Which turn is judged is the prompt profile's choice (``core.profiles``): the last
``user`` turn, the last ``assistant`` turn, or simply the last turn. Turns after the judged one are
not shown (a guard judges a turn in the light of what came before it). Long conversations are
windowed on the judged turn only (``core.windows``): every window is rendered with the same context
turns, which are shown whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardcal.errors import ConfigError

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")
Judge = Literal["user", "assistant", "last"]
JUDGES: tuple[Judge, ...] = ("user", "assistant", "last")


class ConversationError(ConfigError):
    """A ``messages`` list that cannot be classified (the server answers 422, the CLI names the row)."""


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """The turns up to and including the judged one (the last turn)."""

    turns: tuple[Turn, ...]

    @property
    def judged(self) -> Turn:
        return self.turns[-1]

    @property
    def context(self) -> tuple[Turn, ...]:
        return self.turns[:-1]

    @property
    def text(self) -> str:
        """The judged turn's text: what long-input windowing splits."""
        return self.judged.content

    def with_text(self, text: str) -> Conversation:
        """The same conversation with the judged turn's text replaced (one window of it)."""
        return Conversation((*self.context, Turn(self.judged.role, text)))

    def to_messages(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def sha256(self) -> str:
        """Hash of the turns as compact sorted JSON (what a redacted escalation carries)."""
        blob = json.dumps(self.to_messages(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __len__(self) -> int:
        """Characters over all turns (what the server's input limit counts)."""
        return sum(len(t.content) for t in self.turns)


def parse_turns(messages: Sequence[Any], where: str = "messages") -> tuple[Turn, ...]:
    """Turns from ``[{"role", "content"}, ...]``; ConversationError naming the bad entry and the fix."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ConversationError(
            f"{where} must be a non-empty list of {{'role': 'user'|'assistant', 'content': text}} objects"
        )
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) != {"role", "content"}:
            raise ConversationError(
                f"{where}[{i}] must be an object with exactly the keys 'role' and 'content' "
                f"(got {sorted(m) if isinstance(m, Mapping) else type(m).__name__})"
            )
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ConversationError(
                f"{where}[{i}].role is {role!r}; guardcal classifies 'user' and 'assistant' turns only "
                "(fold a system prompt into the policy of your prompt profile, or leave it out)"
            )
        if not isinstance(content, str):
            raise ConversationError(f"{where}[{i}].content must be a string (text), got {type(content).__name__}")
        turns.append(Turn(role, content))
    return tuple(turns)


def judged_conversation(turns: Sequence[Turn], judge: Judge, where: str = "messages") -> Conversation:
    """The conversation cut after the judged turn: the last turn of role ``judge`` (or the last turn)."""
    if not turns:
        raise ConversationError(f"{where} holds no turn; send at least one")
    if judge == "last":
        end = len(turns)
    else:
        found = [i for i, t in enumerate(turns) if t.role == judge]
        if not found:
            raise ConversationError(
                f"{where} has no {judge!r} turn, but this prompt profile judges the last {judge} turn; add one, "
                f"or use a profile that judges {'user' if judge == 'assistant' else 'assistant'} turns"
            )
        end = found[-1] + 1
    return Conversation(tuple(turns[:end]))
