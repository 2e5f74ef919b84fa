"""The FastAPI application of a serving node: OpenAI-compatible routes plus specguard's own.

Routes: GET /health, GET /metrics, GET /v1/models, GET /v1/models/{model},
POST /v1/completions, POST /v1/chat/completions, GET /specguard/v1/responses/{receipt_id};
plugins add more through `register_routes(app, node)` (receipts and log, consensus...).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from .. import __version__
from ..errors import SpecguardError
from ..plugin_manager import load_plugins, pm
from .errors import error_body, error_response, install_handlers, status_of
from .format import TokenText, finish_reason, system_fingerprint, usage
from .generation import ClientGone, GenerationRun, Prepared, finalize, prepare
from .metrics import CONTENT_TYPE
from .openai_schema import ChatCompletionRequest, CompletionRequest
from .streaming import DONE, ChunkMaker, TextDeltas, sse

log = logging.getLogger("specguard.server")

RECEIPT_HEADER = "X-Specguard-Receipt"
MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyLimit:
    """Pure ASGI middleware: refuse a declared Content-Length over the limit with 413 before reading it."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"content-length":
                    try:
                        size = int(value)
                    except ValueError:
                        size = -1
                    if size < 0 or size > self.limit:
                        msg = f"request body must be at most {self.limit} bytes (Content-Length {value.decode('latin-1')[:20]})"
                        await error_response(413, msg, None, "body_too_large")(scope, receive, send)
                        return
        await self.app(scope, receive, send)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (message names the problem)"},
    404: {"model": ErrorResponse, "description": "Unknown model or resource"},
    429: {"model": ErrorResponse, "description": "All generation slots busy and the queue is full"},
}


def create_app(node: Any) -> FastAPI:
    """The ASGI app serving `node` (a specguard.node.Node)."""
    load_plugins()
    app = FastAPI(
        title="specguard",
        version=__version__,
        description="OpenAI-compatible, verifiable LLM inference. Every response carries a signed receipt "
                    "(the `specguard` object) that is appended to the node's transparency log.",
    )
    app.state.node = node
    app.add_middleware(BodyLimit)
    install_handlers(app, node.metrics)
    text_of = TokenText(node.model)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness plus the node's identity (model digest, key id, policy) and remote drafter health."""
        from ..drafters.health import drafter_health

        return {"status": "ok", **node.describe(), "remote_drafters": drafter_health()}

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

    @app.get("/specguard/v1/responses/{receipt_id}", responses={404: _ERRORS[404]})
    async def get_response(receipt_id: str) -> Any:
        """The exact response object a receipt's subject digest covers (needed to verify streams)."""
        found = await anyio.to_thread.run_sync(node.responses.get, receipt_id)
        if found is None:
            return error_response(404, "no stored response for this receipt id", "receipt_id", "response_not_found")
        return found

    async def _serve(request: Request, body: ChatCompletionRequest | CompletionRequest) -> Response:
        prep = await anyio.to_thread.run_sync(prepare, node, body)  # tokenizing and plugin checks may block
        await node.limiter.acquire()
        try:
            run = GenerationRun(node, prep)
            run.start()
        except BaseException:
            node.limiter.release()
            raise
        if prep.stream:
            first = await _first(run, request)
            if first is None:
                return Response(status_code=499)
            return StreamingResponse(_stream(run, prep, first), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            transcript = await run.collect(request)
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
        out = dict(done.body)
        out["specguard"] = done.specguard
        return JSONResponse(out, headers={RECEIPT_HEADER: done.receipt_id})

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

    async def _stream(run: GenerationRun, prep: Prepared, first: tuple[str, Any]) -> AsyncIterator[bytes]:
        maker = ChunkMaker(prep.kind, prep.response_id, prep.created, prep.model_name,
                           "sg-" + node.model.digest.split(":", 1)[-1][:16], prep.logprobs, prep.top_n, text_of)
        deltas = TextDeltas(node.model, prep.params.stop)
        finished = False
        try:
            if prep.kind == "chat":
                yield sse(maker.role())
            item: tuple[str, Any] | None = first
            ttft_seen = False
            while True:
                kind, value = item if item is not None else await run.next()
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
            if not finished:  # the client left: stop the engine; its thread then frees the slot
                run.cancel.set()
                node.metrics.requests_rejected.inc(reason="client_disconnected")

    def _count(prep: Prepared, transcript: Any) -> None:
        m = node.metrics
        m.request_success.inc(finish_reason=finish_reason(transcript))
        m.observe_transcript(transcript)
        m.e2e_latency.observe(time.perf_counter() - prep.admitted_at)

    pm.hook.register_routes(app=app, node=node)
    if not any(getattr(r, "path", None) == "/specguard/v1/receipts/{receipt_id}" for r in app.routes):
        @app.get("/specguard/v1/receipts/{receipt_id}", responses={404: _ERRORS[404]})
        async def get_receipt(receipt_id: str) -> Any:
            doc = await anyio.to_thread.run_sync(node.receipts.get_receipt, receipt_id)
            if doc is None:
                return error_response(404, "no receipt with this id", "receipt_id", "receipt_not_found")
            return doc

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


__all__ = ["create_app", "RECEIPT_HEADER", "system_fingerprint"]
