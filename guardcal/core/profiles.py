"""Prompt profiles: the policy text, label words, layout and quoting of a guard prompt, as YAML.

A profile is validated when it is loaded, before any model loads (:func:`load_profile`): a missing
or mistyped field, an unknown placeholder or key, a label word YAML read as a boolean (unquoted
``Yes``/``No``) is a :class:`~guardcal.errors.ConfigError` naming the file, the field and the fix.
Label words that share a first token are refused once the tokenizer is known
(``LabelSpec.from_tokenizer``).

Built-in profiles live in ``guardcal/assets/prompts/*.yaml`` (``guardcal prompts`` lists them);
``default`` is the paper's prompt, rendering byte-identically to guardcal before profiles existed,
with the same fingerprint (so the shipped bundle stays valid). See ``docs/prompts.md``.

Rendering (:meth:`PromptProfile.render`) takes a plain text or a :class:`Conversation`:

- ``template`` lays out a single text: placeholders ``{instruction}``, ``{rule}`` (the mode's
  rule), ``{input}`` (the quoted text). Without ``template``, a text is a one-turn conversation.
- ``conversation`` lays out turns: ``judge`` (which turn is judged), ``roles`` (the names shown),
  ``turn`` (one turn: ``{role}``, ``{content}``), ``context`` (wraps the earlier turns: ``{turns}``)
  and ``template`` (one string, or one per judged role) with ``{instruction}``, ``{rule}``,
  ``{judged_role}``, ``{input}`` (the judged turn, quoted), ``{context}`` (earlier turns, wrapped)
  and ``{conversation}`` (all turns, the judged one last).
- ``chat_template: tokenizer`` renders the turns with the model's own chat template instead.

The prompt ends at the decision position: ``decision_prefix`` (direct mode) or the opened think
block (reasoning mode, whose :meth:`decision_suffix` closes it and adds ``decision_prefix``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from guardcal.core.conversation import (
    JUDGES,
    ROLES,
    Conversation,
    ConversationError,
    Turn,
    judged_conversation,
    parse_turns,
)
from guardcal.core.examples import SAFE, UNSAFE
from guardcal.core.quoting import QUOTINGS, marker_pattern, quote
from guardcal.errors import ConfigError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ESCALATE = "escalate"
#: what a label word may mean: the two labels, or "escalate" (e.g. Qwen3Guard's "Controversial")
MEANINGS = (SAFE, UNSAFE, ESCALATE)
MODES = ("direct", "reasoning")
DEFAULT = "default"
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "prompts"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INPUT_FIELDS = ("instruction", "rule", "input")
_CONVERSATION_FIELDS = ("instruction", "rule", "input", "judged_role", "context", "conversation")
_KEYS = {
    "name": "a short name (letters, digits, '-', '_')",
    "description": "one line: what the profile is for",
    "source": "where the layout comes from (model card URL(s))",
    "instruction": "the policy / instruction text ({instruction})",
    "rules": "{direct: ..., reasoning: ...}: the answer rule per mode ({rule})",
    "labels": "{safe: WORD, unsafe: WORD, escalate: WORD (optional)}",
    "decision_prefix": "text the prompt ends with, right before the label word (e.g. 'Classification:')",
    "quoting": f"how every turn's text is placed: one of {QUOTINGS}",
    "mode": f"default mode: one of {MODES}",
    "bos": "text put first (e.g. '<bos>' for a tokenizer that adds it itself)",
    "template": "layout of one text: {instruction} {rule} {input}",
    "conversation": "layout of a conversation (judge, roles, turn, context, template)",
    "chat_template": "'none' (default) or 'tokenizer': render turns with the model's chat template",
    "think": "[open, close] reasoning tags (default ['<think>', '</think>'])",
    "reserved": "extra strings broken in 'plain' quoting (layout markers a text could forge)",
}
_CONV_KEYS = ("judge", "roles", "turn", "context", "template")


@dataclass(frozen=True)
class ConversationLayout:
    """How a conversation is shown; see the module docstring."""

    judge: str = "last"
    roles: tuple[tuple[str, str], ...] = (("user", "User"), ("assistant", "Assistant"))
    turn: str = "{role}: {content}\n"
    context: str = "{turns}"
    template: tuple[tuple[str, str], ...] = ()

    def role_name(self, role: str) -> str:
        return dict(self.roles)[role]

    def template_for(self, role: str) -> str:
        return dict(self.template)[role]


@dataclass(frozen=True)
class PromptProfile:
    """A validated prompt profile (build it with :func:`load_profile` or :func:`profile_from_dict`)."""

    name: str
    instruction: str
    labels: tuple[tuple[str, str], ...]
    description: str = ""
    source: tuple[str, ...] = ()
    rules: tuple[tuple[str, str], ...] = ()
    decision_prefix: str = ""
    quoting: str = "json"
    mode: str = "direct"
    bos: str = ""
    template: str | None = None
    conversation: ConversationLayout | None = None
    chat_template: str = "none"
    think: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)
    reserved: tuple[str, ...] = ()
    origin: str = field(default="", compare=False)

    # -- what it says ------------------------------------------------------------------------

    def surfaces(self) -> dict[str, str]:
        """Meaning → label word, e.g. ``{"safe": "Safe", "unsafe": "Unsafe"}``."""
        return dict(self.labels)

    def rule(self, mode: str) -> str:
        rules = dict(self.rules)
        if mode not in rules:
            raise ConfigError(
                f"prompt profile {self.name!r} has no {mode!r} rule, so it cannot run in {mode} mode; "
                f"add rules.{mode} to the profile or run in {'direct' if mode == 'reasoning' else 'reasoning'} mode"
            )
        return rules[mode]

    def effective_mode(self, reasoning: bool | None) -> str:
        """``reasoning`` when asked for (``--reasoning``) or when the profile's own mode is reasoning."""
        return "reasoning" if reasoning or self.mode == "reasoning" else "direct"

    def canonical(self) -> dict[str, Any]:
        """Everything that changes a rendered prompt (not the name, description or source), JSON-ready."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("name", "description", "source", "origin"):
                continue
            value = getattr(self, f.name)
            out[f.name] = None if value is None else json.loads(json.dumps(_plain(value)))
        return out

    def describe(self) -> dict[str, Any]:
        """What a bundle records about the profile: its name and :meth:`canonical` content."""
        return {"name": self.name, **self.canonical()}

    # -- rendering ---------------------------------------------------------------------------

    @cached_property
    def _markers(self) -> re.Pattern[str]:
        names: list[str] = []
        if self.conversation is not None:
            for _, shown in self.conversation.roles:
                names += [f"\n{shown}:", f"{shown}: "] if self.quoting == "plain" else []
        return marker_pattern([*self.reserved, *names, *self.think])

    def quote(self, text: str) -> str:
        return quote(text, self.quoting, self._markers)

    def conversation_of(self, item: str | Conversation) -> Conversation:
        """A plain text as a one-turn (user) conversation; a conversation unchanged."""
        return item if isinstance(item, Conversation) else Conversation((Turn("user", item),))

    def judged(self, messages: Any, where: str = "messages") -> Conversation:
        """The conversation to classify from OpenAI-shaped ``messages`` (ConversationError when it cannot be)."""
        if self.conversation is None and self.chat_template != "tokenizer":
            raise ConversationError(
                f"prompt profile {self.name!r} has no conversation layout, so it classifies single texts only; "
                "send 'input', or use a profile with a 'conversation' section (e.g. default)"
            )
        judge = self.conversation.judge if self.conversation is not None else "last"
        return judged_conversation(parse_turns(messages, where), judge, where)  # type: ignore[arg-type]

    def body(self, item: str | Conversation, mode: str, tokenizer: Any = None) -> str:
        """The prompt without its ending (:meth:`ending`)."""
        rule = self.rule(mode)
        if isinstance(item, str) and self.template is not None:
            values = {"instruction": self.instruction, "rule": rule, "input": self.quote(item)}
            return self.bos + _fill(self.template, values)
        conv = self.conversation_of(item)
        if self.chat_template == "tokenizer":
            return self.bos + self._chat(conv, tokenizer)
        layout = self.conversation
        if layout is None:
            raise ConversationError(f"prompt profile {self.name!r} has no conversation layout; send 'input'")
        shown = [
            _fill(layout.turn, {"role": layout.role_name(t.role), "content": self.quote(t.content)})
            for t in conv.turns
        ]
        context = _fill(layout.context, {"turns": "".join(shown[:-1])}) if conv.context else ""
        values = {
            "instruction": self.instruction,
            "rule": rule,
            "input": self.quote(conv.judged.content),
            "judged_role": layout.role_name(conv.judged.role),
            "context": context,
            "conversation": "".join(shown),
        }
        return self.bos + _fill(layout.template_for(conv.judged.role), values)

    def _chat(self, conv: Conversation, tokenizer: Any) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"prompt profile {self.name!r} renders with the model's chat template, but the loaded tokenizer "
                "has none; load the model the profile was written for, or set chat_template: none and a template"
            )
        messages = [{"role": t.role, "content": self.quote(t.content)} for t in conv.turns]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def ending(self, mode: str) -> str:
        """Direct mode: the decision prefix; reasoning mode: the opened think block."""
        return self.think[0] + "\n" if mode == "reasoning" else self.decision_prefix

    def render(self, item: str | Conversation, mode: str = "direct", tokenizer: Any = None) -> str:
        return self.body(item, mode, tokenizer) + self.ending(mode)

    def decision_suffix(self, mode: str) -> str:
        """Appended after the reasoning to reach the decision position (empty in direct mode)."""
        return f"\n{self.think[1]}\n{self.decision_prefix}" if mode == "reasoning" else ""

    def decision_surface(self, word: str) -> str:
        """The text the model writes for ``word`` at the decision position: ``" Safe"`` after a prefix ending
        in a visible character (``Classification:``), the bare word after whitespace or nothing."""
        ending = self.decision_prefix
        return " " + word if ending and not ending[-1].isspace() else word


# -- loading and validation -----------------------------------------------------------------------


def builtin_names() -> list[str]:
    """Names of the built-in profiles (``default`` first)."""
    names = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
    return [DEFAULT, *(n for n in names if n != DEFAULT)] if DEFAULT in names else names


@lru_cache(maxsize=32)
def _load_path(path: str) -> PromptProfile:
    import yaml

    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read prompt profile {source}: {exc.strerror}; check the path") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML ({exc}); fix the file") from None
    return profile_from_dict(data, str(source))


def load_profile(spec: str | None = None) -> PromptProfile:
    """A built-in profile by name (None: ``default``) or a YAML file by path; ConfigError otherwise."""
    spec = spec or DEFAULT
    if spec in builtin_names():
        return _load_path(str(PROMPTS_DIR / f"{spec}.yaml"))
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_path(str(path.resolve()))
    raise ConfigError(
        f"--prompt {spec!r} is neither a built-in prompt profile ({', '.join(builtin_names())}) nor an existing "
        "YAML file; pass a name from `guardcal prompts` or the path to your profile (see docs/prompts.md)"
    )


def default_profile() -> PromptProfile:
    return load_profile(DEFAULT)


def profile_from_dict(data: Any, where: str = "prompt profile") -> PromptProfile:
    """Validate a parsed YAML document; ConfigError naming ``where``, the field and the fix."""
    _check_fields(data, where)
    text = _Fields(data, where)
    name = text.string("name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ConfigError(f"{where}: name {name!r} must be 1-64 letters, digits, '-', '_' or '.'")
    chat = text.choice("chat_template", ("none", "tokenizer"), "none")
    template = text.string("template", None)
    conversation = _conversation(data.get("conversation"), where)
    if template is None and conversation is None and chat == "none":
        raise ConfigError(
            f"{where}: give a 'template' (one text), a 'conversation' layout, or chat_template: tokenizer; "
            "without one there is no prompt to render"
        )
    if template is not None:
        _check_placeholders(template, _INPUT_FIELDS, ("input",), f"{where}: template")
    rules = text.mapping("rules", MODES, {"direct": ""})
    if "direct" not in rules:
        raise ConfigError(f"{where}: rules needs a 'direct' entry (may be an empty string)")
    labels = _label_words(text, where)
    think, reserved = _tags(data, where)
    mode = text.choice("mode", MODES, "direct")
    if mode == "reasoning" and "reasoning" not in rules:
        raise ConfigError(f"{where}: mode is reasoning but rules has no 'reasoning' entry; add one")
    source = data.get("source", [])
    source = [source] if isinstance(source, str) else source
    if not (isinstance(source, list) and all(isinstance(s, str) for s in source)):
        raise ConfigError(f"{where}: source must be a URL or a list of URLs")
    return PromptProfile(
        name=name,
        description=text.string("description", ""),
        source=tuple(source),
        instruction=text.string("instruction"),
        rules=tuple((m, rules[m]) for m in MODES if m in rules),
        labels=tuple((m, labels[m]) for m in MEANINGS if m in labels),
        decision_prefix=text.string("decision_prefix", ""),
        quoting=text.choice("quoting", QUOTINGS, "json"),
        mode=mode,
        bos=text.string("bos", ""),
        template=template,
        conversation=conversation,
        chat_template=chat,
        think=(think[0], think[1]),
        reserved=tuple(reserved),
        origin=where,
    )


def _check_fields(data: Any, where: str) -> None:
    """A mapping with known fields only, the required ones present."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a prompt profile is a YAML mapping of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(_KEYS)}")
    for key in ("name", "instruction", "labels"):
        if key not in data:
            raise ConfigError(f"{where}: missing field {key!r} ({_KEYS[key]}); see docs/prompts.md")


def _label_words(text: _Fields, where: str) -> dict[str, str]:
    """``labels``: a word for each meaning, non-empty and distinct."""
    labels = text.mapping("labels", MEANINGS)
    missing = [m for m in (SAFE, UNSAFE) if m not in labels]
    if missing:
        raise ConfigError(f"{where}: labels needs words for {missing}, e.g. labels: {{safe: Safe, unsafe: Unsafe}}")
    words = list(labels.values())
    if any(not w.strip() for w in words) or len({w.strip().casefold() for w in words}) != len(words):
        raise ConfigError(f"{where}: label words must be non-empty and distinct, got {labels}")
    return labels


def _tags(data: Mapping[str, Any], where: str) -> tuple[list[str], list[str]]:
    """``think`` (two tags) and ``reserved`` (strings)."""
    think = data.get("think", [THINK_OPEN, THINK_CLOSE])
    if not (isinstance(think, list) and len(think) == 2 and all(isinstance(t, str) and t for t in think)):
        raise ConfigError(f"{where}: think must be a list of two tags, e.g. ['<think>', '</think>']")
    reserved = data.get("reserved", [])
    if not (isinstance(reserved, list) and all(isinstance(r, str) for r in reserved)):
        raise ConfigError(f"{where}: reserved must be a list of strings")
    return think, reserved


class _Fields:
    """Typed reads of a profile's fields, each failing with the field's name and expected shape."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def string(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{self.where}: missing field {key!r} ({_KEYS.get(key, key)})")
            return default
        value = self.data[key]
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}: {key} must be text, got {_shown(value)}{_bool_hint(value, key)}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in options:
            raise ConfigError(f"{self.where}: {key} is {value!r}; use one of {list(options)}")
        return str(value)

    def mapping(self, key: str, allowed: tuple[str, ...], default: Any = ...) -> dict[str, str]:
        value = self.data.get(key, default)
        if value is ...:
            raise ConfigError(f"{self.where}: missing field {key!r} ({_KEYS[key]})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where}: {key} must be a mapping ({_KEYS[key]}), got {_shown(value)}")
        bad = sorted(str(k) for k in value if k not in allowed)
        if bad:
            raise ConfigError(f"{self.where}: {key} has unknown key(s) {bad}; use {list(allowed)}")
        out = {}
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigError(
                    f"{self.where}: {key}.{k} must be text, got {_shown(v)}{_bool_hint(v, f'{key}.{k}')}"
                )
            out[str(k)] = v
        return out


def _conversation(raw: Any, where: str) -> ConversationLayout | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: conversation must be a mapping with {list(_CONV_KEYS)}")
    unknown = sorted(set(raw) - set(_CONV_KEYS))
    if unknown:
        raise ConfigError(f"{where}: conversation has unknown field(s) {unknown}; valid: {list(_CONV_KEYS)}")
    f = _Fields(raw, f"{where}: conversation")
    judge = f.choice("judge", JUDGES, "last")
    roles = f.mapping("roles", ROLES, {"user": "User", "assistant": "Assistant"})
    if set(roles) != set(ROLES):
        raise ConfigError(f"{where}: conversation.roles needs a name for each of {list(ROLES)}")
    turn = f.string("turn", "{role}: {content}\n")
    _check_placeholders(turn, ("role", "content"), ("content",), f"{where}: conversation.turn")
    context = f.string("context", "{turns}")
    _check_placeholders(context, ("turns",), ("turns",), f"{where}: conversation.context")
    if "template" not in raw:
        raise ConfigError(f"{where}: conversation needs a 'template' (one string, or one per judged role)")
    tpl = raw["template"]
    per_role = dict.fromkeys(ROLES, tpl) if isinstance(tpl, str) else tpl
    if (
        not isinstance(per_role, Mapping)
        or set(per_role) != set(ROLES)
        or not all(isinstance(v, str) for v in per_role.values())
    ):
        raise ConfigError(f"{where}: conversation.template must be text, or {{user: text, assistant: text}}")
    for role, text in per_role.items():
        _check_placeholders(text, _CONVERSATION_FIELDS, (), f"{where}: conversation.template ({role})")
        if "{input}" not in text and "{conversation}" not in text:
            raise ConfigError(
                f"{where}: conversation.template ({role}) must show the judged turn: {{input}} or {{conversation}}"
            )
    return ConversationLayout(
        judge=judge,
        roles=tuple((r, roles[r]) for r in ROLES),
        turn=turn,
        context=context,
        template=tuple((r, per_role[r]) for r in ROLES),
    )


def _check_placeholders(text: str, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    found = set(_PLACEHOLDER.findall(text))
    unknown = sorted(found - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where} uses unknown placeholder(s) {['{' + u + '}' for u in unknown]}; "
            f"available: {['{' + a + '}' for a in allowed]}"
        )
    for name in required:
        if name not in found:
            raise ConfigError(f"{where} must contain {{{name}}}")


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Replace known ``{name}`` placeholders in one pass (values are never scanned again)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if isinstance(value, (bool, int, float)) else type(value).__name__


def _bool_hint(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return f' (YAML reads unquoted yes/no/true/false as booleans: quote the word, e.g. {key}: "Yes")'
    return ""


def _plain(value: Any) -> Any:
    if isinstance(value, ConversationLayout):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {str(k): _plain(v) for k, v in value}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted names of the profile fields where two :meth:`PromptProfile.describe` dicts differ."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out += [f"{key}.{k}" for k in differing_fields(x, y)]
        elif x != y:
            out.append(key)
    return out


def with_instruction(profile: PromptProfile, instruction: str) -> PromptProfile:
    """The profile with another instruction (policy) text."""
    return replace(profile, instruction=instruction)


def content_sha(profile: PromptProfile) -> str:
    """A hash of :meth:`PromptProfile.canonical` (what the legacy-fingerprint check compares)."""
    blob = json.dumps(profile.canonical(), sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()
