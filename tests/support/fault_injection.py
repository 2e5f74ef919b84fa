"""Test-only verifier fault injection, as a pluggy plugin (never part of production code).

`FaultPlugin` implements `register_routes` (tryfirst): on a verifier node it builds a
`FaultyVerifierService` (a `VerifierService` whose votes can misbehave on purpose), adds the
normal verifier routes for it (they shadow the built-in ones, which Starlette matches later)
and `POST /specguard/v1/test/fault {"behaviour": ...}` to switch behaviour at run time.
Behaviours: honest, always-accept, always-reject, slow, wrong-key, replay. Every faulty vote
logs a WARNING.

Processes load it through `python -m support.fault_verifier` (tests/support/fault_verifier.py),
which registers the plugin and then runs the standalone verifier or `specguard serve`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from starlette.requests import Request

from specguard.consensus.rederive import ACCEPT, REJECT, Judgement
from specguard.consensus.service import VerifierService, VerifyRequest, VerifyRequestError
from specguard.hookspecs import hookimpl
from specguard.keys import NodeKey

log = logging.getLogger("specguard.tests.fault")

FAULT_PATH = "/specguard/v1/test/fault"
BEHAVIOUR_ENV = "SPECGUARD_TEST_VERIFIER_BEHAVIOUR"
SLOW_SECONDS_ENV = "SPECGUARD_TEST_VERIFIER_SLOW_SECONDS"
BEHAVIOURS = ("honest", "always-accept", "always-reject", "slow", "wrong-key", "replay")


class FaultyVerifierService(VerifierService):
    """A verifier that misbehaves on purpose (tests only)."""

    behaviour: str = "honest"
    slow_seconds: float = 30.0
    wrong_key: NodeKey | None = None
    last_vote: dict[str, Any] | None = None

    def set(self, behaviour: Any) -> None:
        if behaviour not in BEHAVIOURS:
            raise VerifyRequestError("unknown fault behaviour", field="behaviour", got=behaviour, expected=BEHAVIOURS)
        log.warning("TEST FAULT INJECTION: verifier switched to behaviour %r", behaviour)
        self.behaviour = behaviour
        self.last_vote = None
        if behaviour == "wrong-key":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            self.wrong_key = NodeKey(Ed25519PrivateKey.generate())

    def vote(self, req: VerifyRequest, judgement: Judgement, key: NodeKey | None = None) -> dict[str, Any]:
        behaviour = self.behaviour
        if behaviour != "honest":
            log.warning("TEST FAULT INJECTION: verifier behaving %r for this vote", behaviour)
        if behaviour == "always-accept":
            judgement = Judgement(ACCEPT, [], judgement.stats)
        elif behaviour == "always-reject":
            judgement = Judgement(REJECT, ["fault injection: always-reject"], judgement.stats)
        elif behaviour == "slow":
            time.sleep(self.slow_seconds)
        elif behaviour == "wrong-key":
            key = self.wrong_key
        elif behaviour == "replay" and self.last_vote is not None:
            return self.last_vote
        vote = super().vote(req, judgement, key)
        if behaviour == "replay":
            self.last_vote = vote
        return vote


class FaultPlugin:
    """Registers the faulty verifier's routes ahead of the built-in consensus plugin's."""

    @hookimpl(tryfirst=True)
    def register_routes(self, app: Any, node: Any) -> None:
        if getattr(node, "role", "serve") != "verifier":
            return
        from fastapi.responses import JSONResponse

        from specguard.attest.receipts import loads_strict
        from specguard.errors import SpecguardError
        from specguard.plugins.consensus import routes

        base = VerifierService.for_node(node)
        service = FaultyVerifierService(model=base.model, key=base.key, tolerances=base.tolerances,
                                        attestation_digest=base.attestation_digest,
                                        allowed_nodes=base.allowed_nodes)
        service.slow_seconds = float(os.environ.get(SLOW_SECONDS_ENV, "30"))
        service.set(os.environ.get(BEHAVIOUR_ENV, "honest"))
        log.warning("TEST FAULT INJECTION route %s enabled", FAULT_PATH)

        @app.post(FAULT_PATH)
        async def set_fault(request: Request) -> Any:
            try:
                body = loads_strict(await request.body(), "body")
                service.set(body.get("behaviour") if isinstance(body, dict) else None)
            except SpecguardError as exc:
                return JSONResponse(status_code=400, content={"error": {"message": exc.summary()}})
            return JSONResponse({"behaviour": service.behaviour})

        routes.add_verifier_routes(app, service, routes.limiter_for(node), routes.budget_for(node))
