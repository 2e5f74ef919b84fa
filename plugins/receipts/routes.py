"""HTTP routes of the receipts layer, registered by the plugin's `register_routes` hook."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from specguard.attest import merkle
from specguard.attest.receipts.issuer import ReceiptIssuer
from specguard.attest.tlog import LogRangeError, TransparencyLog
from specguard.context import NodeContext

log = logging.getLogger("specguard.plugins.receipts")

API = "/specguard/v1"


# --- HTTP routes ------------------------------------------------------------------------------


def issuer_for(node: NodeContext | None) -> ReceiptIssuer | None:
    """The issuer the node was given (`node.receipts`), or None. Never creates or attaches one:
    services are passed in by whoever builds the node."""
    return node.receipts if node is not None else None


def _error(status: int, message: str, param: str | None, code: str) -> Any:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _int_param(raw: str | None, name: str, default: int | None = None) -> int:
    if raw is None or raw == "":
        if default is None:
            raise LogRangeError(f"query parameter '{name}' is required", field=name)
        return default
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", raw):
        raise LogRangeError(f"'{name}' must be a non-negative decimal integer", field=name, got=raw[:40])
    return int(raw)


def _guarded(handler: Any, *args: Any) -> Any:
    """`handler(*args)`, with a bad query parameter answered 400."""
    try:
        return handler(*args)
    except LogRangeError as exc:
        return _error(400, exc.summary(), exc.field, "invalid_parameter")


def _entry(tlog: TransparencyLog, index: str) -> Any:
    i = _int_param(index, "index")
    if i >= tlog.size:
        return _error(404, f"no log entry {i} (log size {tlog.size})", "index", "entry_not_found")
    data = tlog.entry(i)
    return JSONResponse({"index": i, "leaf_hash": merkle.leaf_hash(data).hex(),
                         "data": base64.b64encode(data).decode("ascii"), "envelope": json.loads(data)})


def _inclusion(tlog: TransparencyLog, q: Mapping[str, str]) -> Any:
    size = _int_param(q.get("size"), "size", tlog.size)
    index = _int_param(q.get("index"), "index")
    if size > tlog.size:
        raise LogRangeError("size is larger than the log", field="size", got=size)
    if index >= size:
        raise LogRangeError("index must be smaller than size", field="index", got=index)
    proof = tlog.inclusion_proof(index, size)
    return JSONResponse({"index": index, "tree_size": size, "leaf_hash": tlog.leaf_hash(index).hex(),
                         "root": tlog.root(size).hex(), "inclusion_proof": [h.hex() for h in proof],
                         "checkpoint": tlog.checkpoint(size)})


def _consistency(tlog: TransparencyLog, q: Mapping[str, str]) -> Any:
    new = _int_param(q.get("new"), "new", tlog.size)
    old = _int_param(q.get("old"), "old")
    if new > tlog.size:
        raise LogRangeError("new is larger than the log", field="new", got=new)
    if old > new:
        raise LogRangeError("old must not exceed new", field="old", got=old)
    proof = tlog.consistency_proof(old, new)
    return JSONResponse({"old": old, "new": new, "old_root": tlog.root(old).hex(),
                         "new_root": tlog.root(new).hex(), "consistency_proof": [h.hex() for h in proof],
                         "checkpoint": tlog.checkpoint(new)})


def register(app: FastAPI, node: NodeContext) -> None:
    """The log and receipt routes of a node with a receipt issuer; nothing on a node without a log."""
    issuer = issuer_for(node)
    if issuer is None:  # a node without a log (e.g. a verifier-only process) serves no log routes
        return
    tlog = issuer.log

    @app.get(API + "/log/checkpoint", response_class=PlainTextResponse)
    def get_checkpoint() -> Any:
        return PlainTextResponse(tlog.checkpoint(), media_type="text/plain; charset=utf-8")

    @app.get(API + "/log/entries/{index}")
    def get_entry(index: str) -> Any:
        return _guarded(_entry, tlog, index)

    @app.get(API + "/log/proof/inclusion")
    def get_inclusion(request: Request) -> Any:
        return _guarded(_inclusion, tlog, request.query_params)

    @app.get(API + "/log/proof/consistency")
    def get_consistency(request: Request) -> Any:
        return _guarded(_consistency, tlog, request.query_params)

    @app.get(API + "/receipts/{receipt_id}")
    def get_receipt(receipt_id: str) -> Any:
        doc = issuer.get_receipt(receipt_id)
        if doc is None:
            return _error(404, "no receipt with this id", "receipt_id", "receipt_not_found")
        return JSONResponse(doc)
