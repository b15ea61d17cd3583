"""The review surface (``review`` scope): ``GET /reviews/queue``, ``POST /reviews`` and the console ``/review``.

The queue lists pending escalations and audit samples oldest first, paginated by ``after`` (the ``seq``
of the last item seen), with the input (or its sha256 when the server redacts inputs), the provisional
label, the calibrated confidence rounded to 2 decimals, the reason and the age. Raw probabilities never
leave the store. A verdict names the item ``id`` and a ``label`` (``note`` optional); the reviewer is the
name of the API key that sent it, never a field of the body (an unknown field is a 422). Status codes:
201 recorded; 200 the same label again (idempotent, nothing changes); 404 unknown id; 409 a different
label than the one recorded (refused, kept in the history); 422 a bad body or label; 404 on every review
path when the server runs without ``--reviews``.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from guardcal.serve.deps import CallerDep, ServiceDep, require_scope
from guardcal.serve.handlers import ApiError
from guardcal.serve.protocol import ErrorResponse
from guardcal.serve.reviews import ReviewStore, UnknownItemError
from guardcal.serve.service import GuardService

review_router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
MAX_NOTE_CHARS = 2000
MAX_PAGE = 200
#: a page's ``next``: the last item's request time and arrival number
CURSOR = r"^[0-9]{1,12}(\.[0-9]{1,20})?~[0-9]{1,18}$"


class QueueItem(BaseModel):
    id: str = Field(description="the escalation id (the hook payload's id and webhook-id)")
    kind: Literal["escalation", "audit"]
    reason: str = Field(description="low_confidence, a fail-closed reason, or audit (a sampled confident decision)")
    label: str = Field(description="the provisional label the guard gave")
    confidence: float | None = Field(description="calibrated confidence max(p, 1 - p), 2 decimals; null: no score")
    input: str | None = Field(None, description="the input text (absent when the server redacts inputs)")
    input_sha256: str
    age_s: float = Field(description="seconds since the request was classified")


class QueueResponse(BaseModel):
    items: list[QueueItem]
    pending: int = Field(description="items without a verdict, in all")
    next: str | None = Field(description="'after' for the next page, null on the last one")


class VerdictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    label: Literal["safe", "unsafe"]
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)


class VerdictResponse(BaseModel):
    id: str
    label: str = Field(description="the accepted label")
    reviewer: str = Field(description="who gave the accepted verdict")
    outcome: Literal["recorded", "repeat"]
    pending: int


def store_of(service: GuardService) -> ReviewStore:
    if service.reviews is None:
        raise ApiError(404, "the review queue is off on this server; start guardcal serve with --reviews")
    return service.reviews


def _item(row: dict[str, Any], now: float) -> QueueItem:
    conf = row["confidence"]
    return QueueItem(
        id=row["escalation_id"],
        kind=row["kind"],
        reason=row["reason"],
        label=row["label"],
        confidence=None if conf is None else round(float(conf), 2),
        **({"input": row["input"]} if row["input"] is not None else {}),
        input_sha256=row["input_sha256"],
        age_s=round(max(0.0, now - float(row["created_at"])), 1),
    )


@review_router.get(
    "/reviews/queue", response_model=QueueResponse, response_model_exclude_unset=True, responses=_ERRORS
)
async def review_queue(
    request: Request,
    caller: CallerDep,
    service: ServiceDep,
    response: Response,
    after: Annotated[
        str | None, Query(max_length=64, pattern=CURSOR, description="the 'next' of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> QueueResponse:
    """Pending review items, oldest first."""
    require_scope(request, caller)
    rows, pending = await store_of(service).queue(after=_cursor(after), limit=limit + 1)
    response.headers["Cache-Control"] = "no-store"
    now = time.time()
    page = [_item(r, now) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return QueueResponse(
        items=page, pending=pending, next=None if last is None else f"{last['created_at']!r}~{last['seq']}"
    )


def _cursor(after: str | None) -> tuple[float, int]:
    """``(created_at, seq)`` of a page's ``next`` (an opaque token to clients)."""
    if after is None:
        return float("-inf"), 0
    when, _, seq = after.partition("~")
    try:
        return float(when), int(seq)
    except ValueError:
        raise ApiError(422, "'after' must be the 'next' of a queue page") from None


def _same_origin_json(request: Request) -> None:
    """A browser's Basic credentials ride along on cross-site requests: a state change must be a JSON POST
    (cross-site, that needs a CORS preflight this server never grants) from this server's own origin."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send the verdict as JSON (Content-Type: application/json)")
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise ApiError(403, "cross-origin verdicts are refused; use the console this server serves at /review")


@review_router.post("/reviews", response_model=VerdictResponse, status_code=201, responses=_ERRORS)
async def post_verdict(
    body: VerdictRequest, request: Request, caller: CallerDep, service: ServiceDep, response: Response
) -> VerdictResponse:
    """Record a reviewer's verdict on one escalation or audit sample."""
    require_scope(request, caller)
    if caller.basic:
        _same_origin_json(request)
    if not caller.name:
        raise ApiError(403, "verdicts need a named review key (KEY:review@NAME in GUARDCAL_API_KEYS)")
    store = store_of(service)
    try:
        result = await store.record(body.id, body.label, caller.name, body.note)
    except UnknownItemError:
        raise ApiError(404, f"no review item has id {body.id!r}; take ids from GET /reviews/queue") from None
    if result.outcome == "conflict":
        raise ApiError(
            409,
            f"item {body.id!r} already has the verdict {result.label!r} (by {result.reviewer}); a different "
            "verdict is refused (it is kept in the review history)",
        )
    if result.outcome == "recorded":
        await service.verdict_recorded(result)
    else:
        response.status_code = 200
    return VerdictResponse(
        id=body.id, label=result.label, reviewer=result.reviewer, outcome=result.outcome, pending=await store.pending()
    )


class AuditReport(BaseModel):
    model_version: str
    policy_version: str
    audit_rate: float
    labels: dict[str, dict[str, Any]] = Field(
        description="per predicted label: reviewed, wrong, error (weighted by 1/p), lower/upper (Clopper-Pearson, "
        "level), n_eff, target (the bundle's alpha) and status (within / unconfirmed / above / no_target)"
    )


@review_router.get("/reviews/audit", response_model=AuditReport, responses=_ERRORS)
async def audit_report(request: Request, caller: CallerDep, service: ServiceDep) -> AuditReport:
    """The auto-decision error estimated from reviewed audit samples of the running policy (review or internal)."""
    require_scope(request, caller)
    store_of(service)
    estimates = await service.audit_report()
    return AuditReport(
        model_version=service.model_version,
        policy_version=service.policy_version,
        audit_rate=service.audit_rate,
        labels={label: e.to_dict() for label, e in estimates.items()},
    )


_STATIC = {
    "/review": ("review.html", "text/html; charset=utf-8"),
    "/review/app.js": ("review.js", "text/javascript; charset=utf-8"),
    "/review/app.css": ("review.css", "text/css; charset=utf-8"),
}
CONSOLE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _console_file(path: str) -> Response:
    name, media = _STATIC[path]
    body = resources.files("guardcal.serve").joinpath("static", name).read_bytes()
    return Response(body, media_type=media, headers=CONSOLE_HEADERS)


@review_router.get("/review", include_in_schema=False)
@review_router.get("/review/app.js", include_in_schema=False)
@review_router.get("/review/app.css", include_in_schema=False)
async def console(request: Request, caller: CallerDep, service: ServiceDep) -> Response:
    """The review console: a static page whose script reads the queue and posts verdicts (no data inline)."""
    require_scope(request, caller)
    store_of(service)
    return _console_file(request.url.path)
