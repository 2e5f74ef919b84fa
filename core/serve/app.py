"""The FastAPI application of a serving node: the base app (error shape, streamed body limit,
optional bearer auth), the typed `ServeState`, the node's routes (specguard.serve.routes) and
every plugin's (`register_routes`: receipts and log, consensus...)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import FastAPI

from .. import __version__
from ..openai.format import TokenText
from ..plugin_manager import load_plugins, pm
from ..web.base import MAX_BODY_BYTES, create_base_app
from .node import Node
from .routes import RECEIPT_HEADER, TOKEN_HEADER, pin_model_enum, router
from .stream import ServeState

log = logging.getLogger("specguard.server")

DESCRIPTION = ("OpenAI-compatible, verifiable LLM inference. Every response carries a signed receipt "
               "(the `specguard` object) that is appended to the node's transparency log.")


def receipts_enabled() -> bool:
    """Whether any loaded plugin implements `issue_receipt` (the receipts layer is not blocked)."""
    return bool(pm.hook.issue_receipt.get_hookimpls())


def create_app(node: Node, *, api_keys: Iterable[str] = (), body_limit: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `node`. With `api_keys`, every route but /health and the public log
    routes needs `Authorization: Bearer <one of them>`."""
    load_plugins()
    app = create_base_app("specguard", version=__version__, metrics=node.metrics, body_limit=body_limit,
                          api_keys=api_keys, description=DESCRIPTION)
    with_receipts = receipts_enabled()
    if not with_receipts:
        log.warning("no plugin issues receipts (receipts plugin blocked?): responses carry no receipt")
    app.state.node = node
    app.state.serve = ServeState(node=node, text_of=TokenText(node.model), with_receipts=with_receipts,
                                 auth_enabled=bool(app.state.auth_enabled))
    app.include_router(router)
    pm.hook.register_routes(app=app, node=node)
    pin_model_enum(app, node.served_model_name)
    return app


__all__ = ["MAX_BODY_BYTES", "RECEIPT_HEADER", "TOKEN_HEADER", "create_app", "receipts_enabled"]
