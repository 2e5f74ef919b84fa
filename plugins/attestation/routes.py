"""HTTP routes of the attestation layer, registered by the plugin's `register_routes` hook."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from specguard.attest.binding import MAX_NONCE, MIN_NONCE
from specguard.context import NodeContext
from specguard.node_evidence import node_evidence

log = logging.getLogger("specguard.attest")


def register(app: FastAPI, node: NodeContext) -> None:
    """The attestation route of a serving node."""
    from fastapi import HTTPException

    @app.get("/specguard/v1/attestation")
    def attestation(nonce: str | None = None) -> dict:
        """The node's evidence bound to its key and `nonce` (hex, 16..64 bytes)."""
        if nonce is None:
            return node_evidence(node).to_json()
        try:
            raw = bytes.fromhex(nonce)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail="nonce must be hex") from exc
        if not MIN_NONCE <= len(raw) <= MAX_NONCE:
            raise HTTPException(status_code=400, detail=f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes")
        from specguard.errors import SpecguardError

        try:
            return node_evidence(node, raw).to_json()
        except SpecguardError as exc:
            raise HTTPException(status_code=503, detail=exc.summary()) from exc
