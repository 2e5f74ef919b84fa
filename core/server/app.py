"""The FastAPI application of a serving node: OpenAI-compatible routes plus specguard's own.

Routes: GET /health, GET /metrics, GET /v1/models, GET /v1/models/{model},
POST /v1/completions, POST /v1/chat/completions, GET /specguard/v1/responses/{receipt_id}
(only with the response's secret token); plugins add more through `register_routes(app, node)`
(receipts and log, consensus...). The app is built on specguard.server.base (error shape,
streamed body limit, optional bearer auth).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from .. import __version__
from ..errors import SpecguardError
from ..plugin_manager import load_plugins, pm
from .base import MAX_BODY_BYTES, BodyLimit, create_base_app, parse_bearer
from .errors import error_body, error_response, status_of
from .format import TokenText, finish_reason, system_fingerprint, usage
from .generation import ClientGone, Finalized, GenerationRun, Prepared, check_prompt_size, finalize, prepare
from .metrics import CONTENT_TYPE
from .openai_schema import ChatCompletionRequest, CompletionRequest
from .streaming import DONE, ChunkMaker, TextDeltas, sse

log = logging.getLogger("specguard.server")

RECEIPT_HEADER = "X-Specguard-Receipt"
#: the per-response secret that reads the stored body back (GET /specguard/v1/responses/{id})
TOKEN_HEADER = "X-Specguard-Response-Token"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (message names the problem)"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "Unknown model or resource"},
    429: {"model": ErrorResponse, "description": "All generation slots busy and the queue is full"},
}


def receipts_enabled() -> bool:
    """Whether any loaded plugin implements `issue_receipt` (the receipts layer is not blocked)."""
    return bool(pm.hook.issue_receipt.get_hookimpls())


def create_app(node: Any, *, api_keys: Iterable[str] = (), body_limit: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `node` (a specguard.node.Node). With `api_keys`, every route but
    /health and the public log routes needs `Authorization: Bearer <one of them>`."""
    load_plugins()
    app = create_base_app(
        "specguard", version=__version__, metrics=node.metrics, body_limit=body_limit, api_keys=api_keys,
        description="OpenAI-compatible, verifiable LLM inference. Every response carries a signed receipt "
                    "(the `specguard` object) that is appended to the node's transparency log.",
    )
    app.state.node = node
    auth_enabled = bool(app.state.auth_enabled)
    with_receipts = receipts_enabled()
    if not with_receipts:
        log.warning("no plugin issues receipts (receipts plugin blocked?): responses carry no receipt")
    text_of = TokenText(node.model)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness plus the node's identity (model digest, key id, policy) and remote drafter health."""
        from ..drafters.health import drafter_health

        out: dict[str, Any] = {"status": "ok", **node.describe(), "remote_drafters": drafter_health(),
                               "receipts": with_receipts, "auth": auth_enabled,
                               "hold_streams": bool(node.hold_streams)}
        if not with_receipts:
            out["warnings"] = ["no receipts: no plugin implements issue_receipt (the receipts plugin is not "
                               "loaded), so responses carry no receipt and are not logged"]
        return out

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text exposition format."""
        return Response(node.metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict[str, Any]:
        return {"id": node.served_model_name, "object": "model", "created": 0, "owned_by": "specguard",
                "digest": node.model.digest, "max_model_len": node.max_context}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}", responses={404: _ERRORS[404]})
    async def get_model(model: str) -> Any:
        if model not in (node.served_model_name, node.model.name):
            return error_response(404, f"the model {model!r} is not served here", "model", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", responses=_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _serve(request, body)

    @app.post("/v1/completions", responses=_ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _serve(request, body)

    @app.get("/specguard/v1/responses/{receipt_id}", responses={401: _ERRORS[401], 404: _ERRORS[404]})
    async def get_response(receipt_id: str, request: Request) -> Any:
        """The exact response object a receipt's subject digest covers (needed to verify streams).

        Only for whoever made the request: send the response's secret (`specguard.response_token`,
        also the `X-Specguard-Response-Token` header of the response) as that header (or as
        `Authorization: Bearer` when the server has no API keys); never in the URL, which access logs keep."""
        if "token" in request.query_params:
            return error_response(400, f"send the response token as the {TOKEN_HEADER} header, not as ?token= "
                                       "(URLs end up in access logs)", "token", "token_in_query")
        token = request.headers.get(TOKEN_HEADER)
        if not token and not auth_enabled:
            token = parse_bearer(request.scope.get("headers", []))
        if not token:
            return error_response(401, f"a stored response is served only to its requester: send its "
                                       f"response_token as the {TOKEN_HEADER} header",
                                  "token", "missing_response_token")
        if node.responses is None:
            found = None
        else:
            found = await anyio.to_thread.run_sync(node.responses.get, receipt_id, token)
        if found is None:  # unknown id and wrong token answer alike
            return error_response(404, "no stored response for this receipt id and token", "receipt_id",
                                  "response_not_found")
        return found

    async def _serve(request: Request, body: ChatCompletionRequest | CompletionRequest) -> Response:
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
            first = await _first(run, request)
            if first is None:
                return Response(status_code=499)
            return StreamingResponse(_stream(run.next, prep, first, cancel=run.cancel), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        events: list[tuple[str, Any]] = []
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
        done = await anyio.to_thread.run_sync(finalize, node, prep, transcript, text_of)
        _count(prep, transcript)
        headers = _headers(done)
        if prep.stream:  # held back until the verdict: only now does any token leave the node
            replay = iter([*events, ("done", transcript)])

            async def next_item() -> tuple[str, Any]:
                return next(replay)

            first_item = await next_item()
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return StreamingResponse(_stream(next_item, prep, first_item, done), media_type="text/event-stream",
                                     headers=headers)
        out = dict(done.body)
        out["specguard"] = done.specguard
        return JSONResponse(out, headers=headers)

    def _headers(done: Finalized) -> dict[str, str]:
        headers: dict[str, str] = {}
        if done.receipt_id:
            headers[RECEIPT_HEADER] = done.receipt_id
        if done.response_token:
            headers[TOKEN_HEADER] = done.response_token
        return headers

    async def _first(run: GenerationRun, request: Request) -> tuple[str, Any] | None:
        """Wait for the first event so that a failure before any token still gets a proper 4xx status."""
        try:
            kind, value = await run.next(request)
        except ClientGone:
            node.metrics.requests_rejected.inc(reason="client_disconnected")
            return None
        if kind == "error":
            raise value
        return kind, value

    async def _stream(next_item: Callable[[], Awaitable[tuple[str, Any]]], prep: Prepared,
                      first: tuple[str, Any], done: Finalized | None = None,
                      cancel: Any = None) -> AsyncIterator[bytes]:
        """SSE chunks from engine events; `done` is given when the response was finalized (and judged)
        before streaming (held streams), else finalize runs after the last token."""
        maker = ChunkMaker(prep.kind, prep.response_id, prep.created, prep.model_name,
                           "sg-" + node.model.digest.split(":", 1)[-1][:16], prep.logprobs, prep.top_n, text_of)
        deltas = TextDeltas(node.model, prep.params.stop)
        finished = False
        try:
            if prep.kind == "chat":
                yield sse(maker.role())
            item: tuple[str, Any] | None = first
            ttft_seen = done is not None
            while True:
                kind, value = item if item is not None else await next_item()
                item = None
                if kind == "error":
                    raise value
                if kind == "done":
                    transcript = value
                    break
                if not ttft_seen and value.tokens:
                    node.metrics.ttft.observe(time.perf_counter() - prep.admitted_at)
                    ttft_seen = True
                text = deltas.push([r.token_id for r in value.tokens])
                if text or (prep.logprobs and value.tokens):
                    yield sse(maker.delta(text, value.tokens))
            tail = deltas.finish(transcript.text)
            if tail:
                yield sse(maker.delta(tail, []))
            if done is None:
                done = await anyio.to_thread.run_sync(finalize, node, prep, transcript, text_of)
                _count(prep, transcript)
            last = maker.finish(finish_reason(transcript))
            if prep.include_usage:
                yield sse(last)
                last = maker.usage(usage(transcript))
            last["specguard"] = done.specguard
            yield sse(last)
            yield DONE
            finished = True
        except SpecguardError as exc:
            finished = True
            node.metrics.requests_rejected.inc(reason=getattr(exc, "code", None) or type(exc).__name__)
            yield sse(error_body(status_of(exc), exc.summary(), exc.field, type(exc).__name__))
            yield DONE
        except Exception as exc:  # a bug: tell the client in-band and keep serving
            finished = True
            log.exception("stream %s failed", prep.response_id)
            node.metrics.requests_rejected.inc(reason="internal_error")
            yield sse(error_body(500, f"internal server error ({type(exc).__name__})", None, "internal_error"))
            yield DONE
        finally:
            if not finished:  # the client left: stop the engine (if still running); its thread frees the slot
                if cancel is not None:
                    cancel.set()
                node.metrics.requests_rejected.inc(reason="client_disconnected")

    def _count(prep: Prepared, transcript: Any) -> None:
        m = node.metrics
        m.request_success.inc(finish_reason=finish_reason(transcript))
        m.observe_transcript(transcript)
        m.e2e_latency.observe(time.perf_counter() - prep.admitted_at)

    pm.hook.register_routes(app=app, node=node)
    _pin_model_enum(app, node)
    return app


def _pin_model_enum(app: FastAPI, node: Any) -> None:
    """Advertise the served model name as the only valid `model` value in the OpenAPI schema."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = _build_schema(app)
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            props = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
            if "model" in props:
                props["model"]["enum"] = [node.served_model_name]
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


__all__ = ["create_app", "RECEIPT_HEADER", "TOKEN_HEADER", "BodyLimit", "MAX_BODY_BYTES", "system_fingerprint"]
