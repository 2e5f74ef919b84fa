"""OpenAI-shaped error bodies and the exception handlers that produce them.

Every error answer is `{"error": {"message", "type", "param", "code"}}`. Anything a client can
send maps to a 4xx: validation problems and malformed JSON to 400, unknown routes to 404,
wrong methods to 405, a full queue to 429. A 500 means a bug in the server, and is logged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RequestError, SpecguardError

log = logging.getLogger("specguard.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class ModelNotFoundError(RequestError):
    """The request names a model this server does not serve (HTTP 404)."""

    http_status = 404
    code = "model_not_found"


class QueueFullError(RequestError):
    """Every generation slot is busy and the wait queue is full (HTTP 429)."""

    http_status = 429
    code = "queue_full"


class ContextLengthError(RequestError):
    """The prompt (plus max_tokens) does not fit the model's context (HTTP 400)."""

    code = "context_length_exceeded"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error JSON object."""
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error" if status < 500
                                                             else "server_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(status, message, param, code), headers=headers)


def status_of(exc: SpecguardError) -> int:
    """The HTTP status for a SpecguardError: its `http_status` attribute, else 400."""
    status = getattr(exc, "http_status", 400)
    return status if isinstance(status, int) and 400 <= status <= 599 else 400


#: seconds a client should wait before retrying a 429 (queue full, rate limited) when the error names none
DEFAULT_RETRY_AFTER = 1


def specguard_error_response(exc: SpecguardError) -> JSONResponse:
    code = getattr(exc, "code", None) or type(exc).__name__
    status = status_of(exc)
    headers = None
    if status == 429:  # OpenAI SDKs honour Retry-After; without it they back off blindly
        retry = getattr(exc, "retry_after", None)
        seconds = retry if isinstance(retry, int | float) and retry > 0 else DEFAULT_RETRY_AFTER
        headers = {"Retry-After": str(max(1, math.ceil(seconds)))}
    return error_response(status, exc.summary(), exc.field, code, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


def validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """One readable message naming every problem, the first offending parameter, and a code."""
    errors = list(exc.errors())
    if not errors:
        return "invalid request", None, "invalid_request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", first.get("msg", ""))
        return f"malformed JSON body: {detail}", None, "invalid_json"
    parts = []
    for err in errors[:8]:
        where = _loc(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            parts.append(f"'{where}' is required")
        elif err.get("type") == "model_attributes_type" and where == "body":
            parts.append("the request body must be a JSON object")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"'{where}' is not supported by this server")
        elif err.get("type") == "value_error":  # our validators name the unsupported feature themselves
            parts.append(f"'{where}': {msg.removeprefix('Value error, ')}")
        else:
            got = err.get("input")
            shown = repr(got) if isinstance(got, int | float | bool | str) or got is None else type(got).__name__
            if len(shown) > 60:
                shown = shown[:57] + "..."
            parts.append(f"'{where}': {msg} (got {shown})")
    if len(errors) > 8:
        parts.append(f"and {len(errors) - 8} more")
    param = _loc(first.get("loc", ()))
    return "; ".join(parts), (None if param == "body" else param), "invalid_request"


def install_handlers(app: FastAPI, metrics: Any = None) -> None:
    """Register the handlers that turn every failure into an OpenAI error body."""

    def rejected(reason: str) -> None:
        if metrics is not None:
            metrics.requests_rejected.inc(reason=reason)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(exc)
        rejected("invalid_json" if code == "invalid_json" else "invalid_request")
        return error_response(400, message, param, code)

    @app.exception_handler(SpecguardError)
    async def on_specguard(request: Request, exc: SpecguardError) -> JSONResponse:
        rejected(getattr(exc, "code", None) or type(exc).__name__)
        return specguard_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message, code = f"no route {request.method} {request.url.path}", "not_found"
        elif status == 405:
            message, code = f"method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
        elif status == 413:
            message, code = str(exc.detail), "body_too_large"
        elif isinstance(exc.detail, dict):  # {"field", "error", "got", "expected"} (drafting server)
            d = exc.detail
            message = str(d.get("error") or d.get("message") or "invalid request")
            extra = [f"{k} {d[k]!r}" for k in ("got", "expected") if k in d]
            message = message + (f" ({', '.join(extra)})" if extra else "")
            param = d.get("field") if isinstance(d.get("field"), str) else None
            if status < 500:
                rejected(f"http_{status}")
            return error_response(status, message[:500], param, d.get("code") if isinstance(d.get("code"), str)
                                  else None, headers=getattr(exc, "headers", None))
        else:
            message, code = str(exc.detail), None
        if status < 500:
            rejected(f"http_{status}")
        return error_response(status, message, None, code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        rejected("internal_error")
        return error_response(500, f"internal server error ({type(exc).__name__})", None, "internal_error")
