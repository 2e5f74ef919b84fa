"""HTTP routes of the commitments layer, registered by the plugin's `register_routes` hook."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specguard.errors import SpecguardError, UsageError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from specguard.context import NodeContext

log = logging.getLogger("specguard.plugins.commitments")

ROUTE = "/specguard/v1/commitment"


def node_secret(node: NodeContext) -> Any:
    """The node's commitment secret for the model it serves (created on first use under node.home)."""
    from specguard.attest.commitments.model import load_or_create_secret

    return load_or_create_secret(Path(node.home), node.model.digest)


def register(app: FastAPI, node: NodeContext):
    from fastapi.responses import JSONResponse

    from specguard.attest.commitments.model import published_document

    @app.get(ROUTE, tags=["specguard"], summary="This node's published model commitment")
    def published_commitment() -> Any:
        if node.model is None:
            err = UsageError("this node serves no model, so it has no model commitment", field="model")
            return JSONResponse(status_code=404, content=err.to_dict())
        try:
            secret = node_secret(node)
        except SpecguardError as exc:
            log.error("model commitment unavailable: %s", exc.summary())
            return JSONResponse(status_code=503, content=exc.to_dict())
        return JSONResponse(content=published_document(secret, node.key_id))
