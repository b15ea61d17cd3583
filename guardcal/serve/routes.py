"""HTTP endpoints: ``POST /classify``, ``GET /healthz``, ``GET /readyz`` (``/metrics``: metrics.py).

Routes only translate HTTP into :meth:`GuardService.classify` and back; limits that name a
setting (413 input length, 422 batch size) are checked here. Status codes of ``/classify``:

- 200: a verdict per input. Backend errors, a missing decision token and the request deadline
  are answered 200 *fail-closed* (label ``unsafe``, action ``fail_action``), never 5xx;
- 400 a body that is not JSON at all (invalid UTF-8, nesting too deep to parse);
- 401 missing/unknown key (when keys are configured), 403 a key of another scope, or a non-local
  caller without keys (both refused in middleware, before the body is read);
- 413 an input over ``max_input_chars`` (or a body over the size any valid request needs), or one
  longer than ``max_windows`` scoring windows of ``max_input_tokens`` tokens (long inputs are scored
  whole, as overlapping windows: never cut);
- 422 unknown fields, wrong types, empty batch or a batch over ``max_request_batch``; more than one of
  ``input``/``inputs``/``messages``; ``messages`` with an unknown role, no turn of the role the prompt
  profile judges, or sent to a profile without a conversation layout;
- 429 (``Retry-After: 1``) the bounded queue is full; 503 (``Retry-After: 5``) not serving (starting,
  draining, model worker stopped), or an escalation that could not be stored by the deadline while
  ``fail_action`` is ``escalate`` (with ``block`` that input is answered ``block``).

``/readyz`` is 503 while not serving and after ``unready_after_failures`` backend failures in a row
(until a probe succeeds); ``/healthz`` is 503 only once the model worker has stopped for good.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from guardcal.core.conversation import Conversation, ConversationError
from guardcal.serve.deps import CallerDep, ServiceDep, SettingsDep, require_scope
from guardcal.serve.handlers import RETRY_AFTER_NOT_READY_S, ApiError
from guardcal.serve.protocol import (
    BatchClassifyResponse,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    Status,
)
from guardcal.serve.settings import ServeSettings

router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 422, 429, 503)
}


def conversation_of(body: ClassifyRequest, settings: ServeSettings) -> Conversation:
    """The request's conversation cut at the profile's judged turn; 422 naming the problem and the fix."""
    try:
        return settings.profile().judged(body.turns())
    except ConversationError as exc:
        raise ApiError(422, f"invalid request: {exc}") from None


def check_limits(texts: list[Any], settings: ServeSettings) -> None:
    """422 for a batch over ``max_request_batch``, 413 for an input (or a conversation, all turns) over
    ``max_input_chars``."""
    if len(texts) > settings.max_request_batch:
        raise ApiError(
            422,
            f"'inputs' holds {len(texts)} texts; the limit is {settings.max_request_batch} per request "
            "(GUARDCAL_MAX_REQUEST_BATCH); split the batch",
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_input_chars:
            what = "the conversation's turns are" if isinstance(text, Conversation) else f"input {i} is"
            raise ApiError(
                413,
                f"{what} {len(text)} characters long; the limit is {settings.max_input_chars} "
                "(GUARDCAL_MAX_INPUT_CHARS); shorten it",
            )


@router.post(
    "/classify",
    response_model=ClassifyResponse | BatchClassifyResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def classify(
    body: ClassifyRequest,
    caller: CallerDep,
    service: ServiceDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> ClassifyResponse | BatchClassifyResponse:
    """Label and action for ``input`` (one text), ``inputs`` (a batch) or ``messages`` (a conversation)."""
    require_scope(request, caller)
    texts: list[Any] = [conversation_of(body, settings)] if body.messages is not None else body.texts()
    check_limits(texts, settings)
    verdicts, policy_version = await service.classify_versioned(
        texts, request_id=body.request_id, metadata=body.metadata, scope=caller.scope
    )
    response.headers["Cache-Control"] = "no-store"
    versions: dict[str, Any] = {
        "request_id": body.request_id,
        "model_version": service.model_version,
        "policy_version": policy_version,
    }
    if body.batched:
        return BatchClassifyResponse(results=verdicts, **versions)
    return ClassifyResponse(**verdicts[0].model_dump(), **versions)


@router.get("/healthz", response_model=Status, responses={503: {"model": ErrorResponse}})
async def healthz(request: Request) -> Status:
    """The process is alive: 200 while the model loads or is slow; 503 once the model worker has stopped
    for good (only a restart brings it back, so a liveness probe should restart the process)."""
    service = getattr(request.app.state, "service", None)
    if service is not None and service.worker_died:
        raise ApiError(503, "the model worker has stopped; restart this instance")
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorResponse}})
async def readyz(service: ServiceDep) -> Status:
    """200 while the classifier can answer: started and warmed up, its model worker alive and fewer than
    ``unready_after_failures`` backend failures in a row; 503 (with the reason) otherwise."""
    reason = await service.check_ready()
    if reason is not None:
        raise ApiError(503, f"the classifier is not ready: {reason}", {"Retry-After": str(RETRY_AFTER_NOT_READY_S)})
    return Status(status="ready")
