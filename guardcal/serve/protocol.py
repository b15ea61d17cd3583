"""Request and response bodies of the HTTP API (pydantic, ``extra="forbid"``).

A misspelled field is a 422, never silently ignored. Responses carry a label and an action;
only callers with the ``internal`` scope also get the calibrated confidence, rounded to two
decimals. No response ever carries raw probabilities, logits or margins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

Label = Literal["safe", "unsafe"]
Action = Literal["allow", "block", "escalate"]

MAX_METADATA_ITEMS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
REQUEST_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


def _check_unicode(text: str, what: str) -> None:
    """Refuse lone UTF-16 surrogates (JSON allows ``"\\ud800"``; UTF-8, hooks and tokenizers do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} has a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x} at character {exc.start}), "
            "which is not valid Unicode; send well-formed text (pair surrogates or drop them)"
        ) from None


#: the JSON-schema form of "exactly one of input / inputs / messages" (what ``_one_of`` enforces)
ONE_OF_INPUT: JsonDict = {
    "oneOf": [
        {"required": ["input"], "properties": {"input": {"type": "string"}}},
        {"required": ["inputs"], "properties": {"inputs": {"type": "array"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]
}
MAX_MESSAGES = 64


class Message(_Strict):
    """One turn of a conversation (OpenAI chat shape)."""

    # a str checked by the prompt profile (its 422 names the fix), documented as the enum it accepts
    role: str = Field(description="'user' or 'assistant'", json_schema_extra={"enum": ["user", "assistant"]})
    content: str = Field(description="the turn's text")

    @field_validator("content")
    @classmethod
    def _content_unicode(cls, value: str) -> str:
        _check_unicode(value, "a message's content")
        return value


class ClassifyRequest(_Strict):
    """``input`` (one text), ``inputs`` (a batch) or ``messages`` (one conversation): exactly one of them."""

    model_config = ConfigDict(json_schema_extra=ONE_OF_INPUT)

    input: str | None = Field(None, description="one text to classify")
    inputs: list[str] | None = Field(None, min_length=1, description="texts to classify (1..max_request_batch)")
    messages: list[Message] | None = Field(
        None,
        min_length=1,
        max_length=MAX_MESSAGES,
        description="one conversation (role/content turns); the prompt profile says which turn is judged "
        "(e.g. the last assistant turn) and shows the earlier turns as context",
    )
    request_id: str | None = Field(
        None, max_length=128, pattern=REQUEST_ID_PATTERN, description="caller's id, echoed back and sent to hooks"
    )
    metadata: dict[str, str] | None = Field(
        None,
        description="small string map passed to escalation hooks",
        json_schema_extra={
            "maxProperties": MAX_METADATA_ITEMS,
            "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
        },
    )

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        given = [name for name in ("input", "inputs", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'input' (a string), 'inputs' (a list of strings) or 'messages' (a conversation: "
                f"a list of {{'role', 'content'}} turns); got {' and '.join(given) if given else 'none of them'}"
            )
        return self

    @field_validator("input")
    @classmethod
    def _input_unicode(cls, value: str | None) -> str | None:
        if value is not None:
            _check_unicode(value, "the text")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs_unicode(cls, value: list[str] | None) -> list[str] | None:
        for i, text in enumerate(value or ()):
            _check_unicode(text, f"text {i}")
        return value

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_ITEMS:
            raise ValueError(f"metadata holds at most {MAX_METADATA_ITEMS} entries")
        for key, item in value.items():
            if not 1 <= len(key) <= MAX_METADATA_KEY or len(item) > MAX_METADATA_VALUE:
                raise ValueError(
                    f"metadata keys are 1..{MAX_METADATA_KEY} characters, values at most {MAX_METADATA_VALUE}"
                )
            _check_unicode(key, "a key")
            _check_unicode(item, "a value")
        return value

    @property
    def batched(self) -> bool:
        return self.inputs is not None

    def texts(self) -> list[str]:
        """The texts of ``input``/``inputs`` (empty for ``messages``: see :meth:`turns`)."""
        if self.messages is not None:
            return []
        return list(self.inputs) if self.inputs is not None else [self.input or ""]

    def turns(self) -> list[dict[str, str]] | None:
        """``messages`` as plain dicts, or None."""
        return None if self.messages is None else [m.model_dump() for m in self.messages]


class Verdict(_Strict):
    """The decision on one input."""

    id: str = Field(description="verdict id; escalation hooks receive the same id")
    label: Label = Field(description="predicted label (provisional when escalated)")
    action: Action = Field(description="what the caller should do")
    confidence: float | None = Field(
        None, ge=0.5, le=1.0, description="calibrated confidence, 2 decimals; internal scope only"
    )


class _Versions(_Strict):
    request_id: str | None = None
    model_version: str = Field(description="opaque id of the model, adapter, prompt and label tokens")
    policy_version: str = Field(description="opaque id of the calibration, thresholds, mode and fail action")


class ClassifyResponse(_Versions, Verdict):
    """Answer to a single ``input``."""


class BatchClassifyResponse(_Versions):
    """Answer to ``inputs``: one verdict per input, in order."""

    results: list[Verdict]


class ErrorInfo(_Strict):
    message: str
    type: str
    code: int


class ErrorResponse(_Strict):
    """The one error shape of every endpoint: ``{"error": {"message", "type", "code"}}``."""

    error: ErrorInfo

    @classmethod
    def of(cls, code: int, type_: str, message: str) -> ErrorResponse:
        return cls(error=ErrorInfo(message=message, type=type_, code=code))


class Status(_Strict):
    status: str
