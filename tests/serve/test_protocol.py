"""Request/response models: strict fields, one-of input/inputs, bounded metadata, one error shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from guardcal.serve.protocol import ClassifyRequest, ClassifyResponse, ErrorResponse, Verdict


def test_single_and_batch_texts():
    assert ClassifyRequest(input="a").texts() == ["a"] and not ClassifyRequest(input="a").batched
    batch = ClassifyRequest(inputs=["a", "b"], request_id="r-1", metadata={"k": "v"})
    assert batch.texts() == ["a", "b"] and batch.batched
    assert ClassifyRequest(input="").texts() == [""]


@pytest.mark.parametrize(
    "data",
    [
        {"input": "a", "inputs": ["b"]},
        {},
        {"inputs": []},
        {"input": "a", "x": 1},
        {"input": "a", "request_id": ""},
        {"input": "a", "request_id": "has space"},
        {"input": "a", "request_id": "line\nbreak"},
        {"input": "a", "metadata": {"": "v"}},
        {"input": "a", "metadata": {"k": "v" * 513}},
    ],
)
def test_invalid_requests(data):
    with pytest.raises(ValidationError):
        ClassifyRequest.model_validate(data)


def test_verdict_confidence_is_a_top_label_confidence():
    with pytest.raises(ValidationError):
        Verdict(id="x", label="safe", action="allow", confidence=0.3)
    with pytest.raises(ValidationError):
        Verdict(id="x", label="maybe", action="allow")  # type: ignore[arg-type]


def test_response_and_error_shapes():
    r = ClassifyResponse(id="v", label="unsafe", action="block", model_version="m-1", policy_version="p-1")
    assert r.model_dump(exclude_none=True) == {
        "id": "v",
        "label": "unsafe",
        "action": "block",
        "model_version": "m-1",
        "policy_version": "p-1",
    }
    assert ErrorResponse.of(429, "rate_limited", "busy").model_dump() == {
        "error": {"message": "busy", "type": "rate_limited", "code": 429}
    }
