"""HTTP routes of the consensus layer, registered by the plugin's `register_routes` hook."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request

from specguard.consensus.config import FAULT_PATH, MAX_BODY_BYTES
from specguard.consensus.quorum import (
    KEY_PATH,
    VERIFY_PATH,
)
from specguard.errors import SpecguardError

log = logging.getLogger("specguard.consensus")


# --- verifier routes --------------------------------------------------------------------------


def _service(node: Any) -> Any:
    from specguard.consensus.service import VerifierService

    service = getattr(node, "verifier_service", None)
    if service is None:
        service = VerifierService.for_node(node)
        node.verifier_service = service
    return service


def register(app: Any, node: Any) -> None:
    if getattr(node, "role", "serve") != "verifier":
        return
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from specguard.attest.receipts import loads_strict

    service = _service(node)
    log.info("consensus verifier %s ready (model %s)", service.key.key_id, service.model.digest)

    def error(exc: SpecguardError) -> Any:
        status = int(getattr(exc, "http_status", 400))
        return JSONResponse(status_code=status, content={"error": {
            "message": exc.summary(), "type": "invalid_request_error", "param": exc.field,
            "code": type(exc).__name__}})

    @app.get(KEY_PATH)
    def verifier_key() -> Any:
        return JSONResponse(service.public_info())

    @app.post(VERIFY_PATH)
    async def verify(request: Request) -> Any:
        from specguard.consensus.service import VerifyRequestError

        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(VerifyRequestError("request body too large", field="body", got=len(raw),
                                            expected=f"<= {MAX_BODY_BYTES}"))
        try:
            body = loads_strict(raw, "body")
            vote = await run_in_threadpool(service.handle, body)
        except SpecguardError as exc:
            return error(exc)
        return JSONResponse(vote)

    if service.fault is not None:  # only when SPECGUARD_TEST_VERIFIER_BEHAVIOUR is set: tests only
        log.warning("TEST FAULT INJECTION route %s enabled", FAULT_PATH)

        @app.post(FAULT_PATH)
        async def set_fault(request: Request) -> Any:
            try:
                body = loads_strict(await request.body(), "body")
                service.fault.set(body.get("behaviour") if isinstance(body, dict) else None)
            except SpecguardError as exc:
                return error(exc)
            return JSONResponse({"behaviour": service.fault.behaviour})
