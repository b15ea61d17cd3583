"""One error shape for every failure, and the request-body size guard.

Every error, whether raised by a route (:class:`ApiError`), by FastAPI (validation, 404, 405)
or by the service (queue full, not ready), leaves as ``ErrorResponse``:
``{"error": {"message", "type", "code"}}``. Messages name fields and limits, never the
submitted values (a 422 does not echo the input) and never a score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardcal.errors import InputTooLongError
from guardcal.serve.errors import NotReadyError, OverloadedError
from guardcal.serve.metrics import ServeMetrics
from guardcal.serve.protocol import ErrorResponse

RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_NOT_READY_S = 5
ERROR_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "not_ready",
}
_log = logging.getLogger("guardcal.serve")
_audit = logging.getLogger("guardcal.audit")


class ApiError(Exception):
    """An HTTP error answered as ErrorResponse."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.of(status, ERROR_TYPES.get(status, "error"), message)
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


_EXAMPLE = 'send a JSON object such as {"input": "text"} with Content-Type: application/json'


def _unreadable_body(cause: BaseException | None) -> str:
    """Why the request body could not be read as JSON at all (FastAPI answers these 400)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (bad byte at offset {cause.start}); encode it as UTF-8 and {_EXAMPLE}"
    if isinstance(cause, RecursionError):
        return f"request body nests JSON arrays or objects too deeply to parse; {_EXAMPLE}"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return f"request body holds a number with too many digits to parse; {_EXAMPLE}"
    name = type(cause).__name__ if cause is not None else "unknown error"
    return f"request body could not be parsed as JSON ({name}); {_EXAMPLE}"


def _missing_json_type(request: Request) -> str | None:
    """Name a body sent without ``Content-Type: application/json`` (FastAPI then does not parse it as JSON)."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    sent = f"Content-Type {media!r}" if media else "no Content-Type header"
    return f"request body was sent with {sent}, so it was not read as JSON; {_EXAMPLE}"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        kind = err.get("type")
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "syntax error")
            where = f" at character {loc[0]}" if loc else ""
            return f"request body is not valid JSON ({detail}{where}); {_EXAMPLE}"
        if not loc and kind == "missing":
            return f"request body is empty; {_EXAMPLE}"
        if not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
            return f"request body is not a JSON object; {_EXAMPLE}"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts[:10])


def install_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    """Route every error through :func:`error_response` and count refusals by status code."""

    def answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        metrics.rejected.labels(code=str(status)).inc()
        return error_response(status, message, headers)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return answer(exc.status, exc.message, exc.headers)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's wording
            message = _unreadable_body(exc.__cause__)
        return answer(exc.status_code, message, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return answer(422, _missing_json_type(request) or _validation_message(exc))

    async def on_overloaded(request: Request, exc: Exception) -> JSONResponse:
        return answer(429, str(exc), {"Retry-After": str(RETRY_AFTER_BUSY_S)})

    async def on_too_long(request: Request, exc: Exception) -> JSONResponse:
        return answer(413, str(exc))  # names the token count, the window limit and the fix; never the text

    async def on_not_ready(request: Request, exc: Exception) -> JSONResponse:
        return answer(503, str(exc), {"Retry-After": str(RETRY_AFTER_NOT_READY_S)})

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.error("unhandled %s while serving %s", type(exc).__name__, request.url.path)
        redact = getattr(getattr(request.app.state, "settings", None), "redact_input", True)
        _audit.debug("unhandled %s", type(exc).__name__, exc_info=None if redact else exc)
        return answer(500, "internal error; the server log has the details")

    handlers: dict[Any, Any] = {
        ApiError: on_api_error,
        StarletteHTTPException: on_http,
        RequestValidationError: on_validation,
        OverloadedError: on_overloaded,
        NotReadyError: on_not_ready,
        InputTooLongError: on_too_long,
        Exception: on_unexpected,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes; send fewer or shorter inputs")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` (by Content-Length, or while streaming) with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, _BodyTooLarge(self.max_bytes).detail)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)
