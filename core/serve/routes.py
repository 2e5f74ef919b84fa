"""The routes of a serving node: module-level handlers on one `APIRouter`, reading the typed
`ServeState` the app holds (`app.state.serve`), as vLLM's api_router does.

GET /health, GET /metrics, GET /v1/models, GET /v1/models/{model}, POST /v1/completions,
POST /v1/chat/completions, GET /specguard/v1/responses/{receipt_id} (only with the response's
secret token). Plugins add more through `register_routes(app, node)`.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from ..drafters.health import drafter_health
from ..openai.schema import ChatCompletionRequest, CompletionRequest
from ..web.base import parse_bearer
from ..web.errors import error_response
from ..web.metrics import CONTENT_TYPE
from .pipeline import ClientGone, Finalized, GenerationRun, Item, Prepared, check_prompt_size, prepare
from .stream import ServeState, sse_body

log = logging.getLogger("specguard.server")

RECEIPT_HEADER = "X-Specguard-Receipt"
#: the per-response secret that reads the stored body back (GET /specguard/v1/responses/{id})
TOKEN_HEADER = "X-Specguard-Response-Token"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (message names the problem)"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "Unknown model or resource"},
    429: {"model": ErrorResponse, "description": "All generation slots busy and the queue is full"},
}


def serve_state(request: Request) -> ServeState:
    """The serving node's state, set once by `specguard.serve.app.create_app`."""
    state: ServeState = request.app.state.serve
    return state


State = Annotated[ServeState, Depends(serve_state)]
router = APIRouter()


@router.get("/health")
async def health(state: State) -> dict[str, Any]:
    """Liveness plus the node's identity (model digest, key id, policy) and remote drafter health."""
    node = state.node
    out: dict[str, Any] = {"status": "ok", **node.describe(), "remote_drafters": drafter_health(),
                           "receipts": state.with_receipts, "auth": state.auth_enabled,
                           "hold_streams": node.hold_streams}
    if not state.with_receipts:
        out["warnings"] = ["no receipts: no plugin implements issue_receipt (the receipts plugin is not "
                           "loaded), so responses carry no receipt and are not logged"]
    return out


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    """Prometheus text exposition format."""
    return Response(state.node.metrics.render(), media_type=CONTENT_TYPE)


def _model_card(state: ServeState) -> dict[str, Any]:
    node = state.node
    return {"id": node.served_model_name, "object": "model", "created": 0, "owned_by": "specguard",
            "digest": node.model.digest, "max_model_len": node.max_context}


@router.get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/v1/models/{model}", responses={404: ERRORS[404]})
async def get_model(model: str, state: State) -> Any:
    if model not in (state.node.served_model_name, state.node.model.name):
        return error_response(404, f"the model {model!r} is not served here", "model", "model_not_found")
    return _model_card(state)


@router.post("/v1/chat/completions", responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    return await serve_completion(state, request, body)


@router.post("/v1/completions", responses=ERRORS)
async def completions(body: CompletionRequest, request: Request, state: State) -> Response:
    return await serve_completion(state, request, body)


@router.get("/specguard/v1/responses/{receipt_id}", responses={401: ERRORS[401], 404: ERRORS[404]})
async def get_response(receipt_id: str, request: Request, state: State) -> Any:
    """The exact response object a receipt's subject digest covers (needed to verify streams).

    Only for whoever made the request: send the response's secret (`specguard.response_token`,
    also the `X-Specguard-Response-Token` header of the response) as that header (or as
    `Authorization: Bearer` when the server has no API keys); never in the URL, which access logs keep."""
    if "token" in request.query_params:
        return error_response(400, f"send the response token as the {TOKEN_HEADER} header, not as ?token= "
                                   "(URLs end up in access logs)", "token", "token_in_query")
    token = request.headers.get(TOKEN_HEADER)
    if not token and not state.auth_enabled:
        token = parse_bearer(request.scope.get("headers", []))
    if not token:
        return error_response(401, f"a stored response is served only to its requester: send its "
                                   f"response_token as the {TOKEN_HEADER} header",
                              "token", "missing_response_token")
    store = state.node.responses
    found = None if store is None else await anyio.to_thread.run_sync(store.get, receipt_id, token)
    if found is None:  # unknown id and wrong token answer alike
        return error_response(404, "no stored response for this receipt id and token", "receipt_id",
                              "response_not_found")
    return found


# --- one completion request ------------------------------------------------------------------------


async def serve_completion(state: ServeState, request: Request,
                           body: ChatCompletionRequest | CompletionRequest) -> Response:
    """Admit, prepare and start one request; stream it live, or answer once it is finalized."""
    node = state.node
    check_prompt_size(node, body)  # a length check, before admission and before any tokenizing
    await node.limiter.acquire()  # admission: tokenizing and generation both run inside a slot
    try:
        prep = await anyio.to_thread.run_sync(prepare, node, body)  # tokenizing and plugin checks block
        run = GenerationRun(node, prep)
        run.start()
    except BaseException:
        node.limiter.release()
        raise
    if prep.stream and not node.hold_streams:
        return await _live_stream(state, run, prep, request)
    return await _finalized_answer(state, run, prep, request)


async def _live_stream(state: ServeState, run: GenerationRun, prep: Prepared, request: Request) -> Response:
    """Wait for the first event (a failure before any token still gets a proper 4xx status), then stream."""
    try:
        first = await run.next(request)
    except ClientGone:
        state.node.metrics.requests_rejected.inc(reason="client_disconnected")
        return Response(status_code=499)
    if first[0] == "error":
        raise first[1]
    return StreamingResponse(sse_body(state, run.next, prep, first, cancel=run.cancel),
                             media_type="text/event-stream", headers=SSE_HEADERS)


async def _finalized_answer(state: ServeState, run: GenerationRun, prep: Prepared, request: Request) -> Response:
    """Run to the end, finalize (receipt, judges), then answer: JSON, or a held stream replayed."""
    node = state.node
    events: list[Item] = []
    try:
        transcript = await run.collect(request, events if prep.stream else None)
    except ClientGone:
        node.metrics.requests_rejected.inc(reason="client_disconnected")
        return Response(status_code=499)
    except BaseException:
        run.cancel.set()
        raise
    node.metrics.ttft.observe(transcript.first_token_seconds + (time.perf_counter() - prep.admitted_at
                                                                 - transcript.seconds))
    done = await state.finalize(prep, transcript)
    headers = _headers(done)
    if prep.stream:  # held back until the verdict: only now does any token leave the node
        replay = iter([*events, ("done", transcript)])

        async def next_item() -> Item:
            return next(replay)

        first = await next_item()
        return StreamingResponse(sse_body(state, next_item, prep, first, done), media_type="text/event-stream",
                                 headers={**headers, **SSE_HEADERS})
    return JSONResponse({**done.body, "specguard": done.specguard}, headers=headers)


def _headers(done: Finalized) -> dict[str, str]:
    headers: dict[str, str] = {}
    if done.receipt_id:
        headers[RECEIPT_HEADER] = done.receipt_id
    if done.response_token:
        headers[TOKEN_HEADER] = done.response_token
    return headers


# --- the OpenAPI schema ----------------------------------------------------------------------------


def pin_model_enum(app: FastAPI, served_model_name: str | None) -> None:
    """Advertise the served model name as the only valid `model` value in the OpenAPI schema."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = _build_schema(app)
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            props = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
            if "model" in props:
                props["model"]["enum"] = [served_model_name]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _build_schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema; a plugin route whose schema cannot be generated is left out (and logged),
    so one plugin's annotation bug cannot take /openapi.json down."""
    from fastapi.openapi.utils import get_openapi

    def build(routes: list[Any]) -> dict[str, Any]:
        return get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)

    try:
        return build(list(app.routes))
    except Exception:
        usable = []
        for route in app.routes:
            try:
                build([route])
                usable.append(route)
            except Exception as exc:
                log.warning("route %s left out of the OpenAPI schema: %s", getattr(route, "path", route),
                            str(exc).splitlines()[0][:200])
        return build(usable)


__all__ = ["ERRORS", "RECEIPT_HEADER", "TOKEN_HEADER", "router", "serve_completion", "serve_state"]
