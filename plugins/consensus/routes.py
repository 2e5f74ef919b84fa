"""HTTP routes of the consensus layer, registered by the plugin's `register_routes` hook.

Verifier nodes get POST /specguard/v1/verify and GET /specguard/v1/verifier/key. The
`VerifierService` lives in the routes' closure (never on the node). Verify requests are
rate-limited per client address (token buckets, [consensus] `rate_limit_per_second` and
`rate_limit_burst`; 429 in OpenAI's error shape) before their body is read, then admitted by
`specguard.consensus.admission` (each receipt judged once; a per-client work budget in model tokens).
The client address is the TCP peer (forwarded headers count only from `--trusted-proxy` proxies).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from specguard.consensus.config import MAX_BODY_BYTES, consensus_policy
from specguard.consensus.quorum import KEY_PATH, VERIFY_PATH
from specguard.consensus.ratelimit import RateLimitedError, TokenBuckets
from specguard.errors import SpecguardError

if TYPE_CHECKING:
    from specguard.context import NodeContext

log = logging.getLogger("specguard.consensus")


def _error(exc: SpecguardError, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    status = int(getattr(exc, "http_status", 400))
    if not 400 <= status < 500:
        status = 400
    kind = "rate_limit_error" if status == 429 else "permission_error" if status == 403 else "invalid_request_error"
    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": exc.summary(), "type": kind, "param": exc.field, "code": type(exc).__name__}})


def limiter_for(node: NodeContext) -> TokenBuckets:
    """The per-client rate limiter of a verifier node (its policy's [consensus] rate limit)."""
    pol = consensus_policy(node.policy)
    return TokenBuckets(pol.rate_limit_per_second, pol.rate_limit_burst)


def budget_for(node: NodeContext | None) -> TokenBuckets:
    """The per-client work budget of a verifier node, in model tokens ([consensus] work_* keys; None:
    the defaults)."""
    pol = consensus_policy(node.policy if node is not None else None)
    return TokenBuckets(pol.work_tokens_per_second, pol.work_burst_tokens)


def add_verifier_routes(app: Any, service: Any, limiter: TokenBuckets, budget: TokenBuckets | None = None) -> None:
    """Add the verifier routes for `service` (a `VerifierService` or a subclass) to `app`."""
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from specguard.attest.receipts.parse import loads_strict
    from specguard.consensus.admission import VerifyAdmission
    from specguard.consensus.service import VerifyRequestError

    admission = VerifyAdmission(service, budget if budget is not None else budget_for(None))
    app.state.verify_admission = admission

    @app.get(KEY_PATH)
    def verifier_key() -> Any:
        return JSONResponse(service.public_info())

    @app.post(VERIFY_PATH)
    async def verify(request: Request) -> Any:
        client = request.client.host if request.client is not None else "unknown"
        try:
            limiter.take(client)
        except RateLimitedError as exc:
            return _error(exc, {"Retry-After": str(limiter.retry_after(client))})
        raw = bytearray()
        async for chunk in request.stream():  # the limit applies to the bytes received, chunked or not
            raw.extend(chunk)
            if len(raw) > MAX_BODY_BYTES:
                return _error(VerifyRequestError("request body too large", field="body", got=f"> {MAX_BODY_BYTES}",
                                                 expected=f"<= {MAX_BODY_BYTES}"))
        try:
            body = loads_strict(bytes(raw), "body")
            vote = await run_in_threadpool(admission.handle, body, client)
        except RateLimitedError as exc:  # the work budget
            return _error(exc, {"Retry-After": str(exc.retry_after)})
        except SpecguardError as exc:
            return _error(exc)
        return JSONResponse(vote)


def register(app: Any, node: NodeContext) -> None:
    """Verifier routes on a verifier node; nothing on a serving node."""
    if node.role != "verifier":
        return
    from specguard.consensus.service import VerifierService

    service = VerifierService.for_node(node)
    log.info("consensus verifier %s ready (model %s)", service.key.key_id, service.model.digest)
    add_verifier_routes(app, service, limiter_for(node), budget_for(node))
