"""Built-in integrity layer: commitment proofs (registered like any third-party plugin).

- `seal_transcript`: when a node serves a model, adds the evidence slot "commitment": a fresh
  Pedersen commitment to the node's model digest and an equality proof to the node's published
  commitment, bound to `transcript.binding_digest()`.
- `verify_evidence`: checks that slot offline against `statement["predicate"]["binding_digest"]`
  (put there by the receipts plugin) and, if given, `options.model_commitment` (a pinned hex
  commitment; `specguard verify --model-commitment` then requires the slot).
- `register_routes`: `GET /specguard/v1/commitment` serves the published commitment.
- `register_commands`: `specguard commit open|show|disclose|verify-disclosure`.

The node object must provide `home` (Path), `model` (with `.digest`, or None) and `key_id`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from specguard.hookspecs import hookimpl

from . import cli as cli_commands
from . import routes
from .routes import node_secret

if TYPE_CHECKING:
    import click
    from fastapi import FastAPI

    from specguard.attest.options import VerifyOptions
    from specguard.context import NodeContext
    from specguard.transcript import Transcript

log = logging.getLogger("specguard.plugins.commitments")


@hookimpl
def seal_transcript(transcript: Transcript, evidence: dict[str, Any], node: NodeContext | None,
                    receipt_id: str) -> None:
    if node is None or node.model is None:
        return None
    from specguard.attest.commitments.model import EVIDENCE_SLOT, CommitmentEvidenceError, response_evidence

    secret = node_secret(node)
    if transcript.model_digest != secret.model_digest:
        raise CommitmentEvidenceError("transcript was produced by another model than the node commits to",
                                      field="transcript.model_digest", got=transcript.model_digest,
                                      expected=secret.model_digest)
    # the proof's context binds the node key and the receipt id the evidence goes into
    evidence[EVIDENCE_SLOT] = response_evidence(secret, transcript.binding_digest(),
                                                node_public_key=node.public_key_bytes, receipt_id=receipt_id)
    return None


@hookimpl
def verify_evidence(slot: str, value: Any, statement: dict[str, Any], options: VerifyOptions) -> dict[str, Any] | None:
    from specguard.attest.commitments.model import (
        EVIDENCE_SLOT,
        CommitmentEvidenceError,
        verify_response_evidence,
    )

    if slot != EVIDENCE_SLOT:
        return None
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    binding = predicate.get("binding_digest") if isinstance(predicate, dict) else None
    pinned = getattr(options, "model_commitment", None) if options is not None else None
    if pinned is not None and not isinstance(pinned, str):
        raise CommitmentEvidenceError("pinned model commitment must be a hex string", field="model_commitment",
                                      got=type(pinned).__name__)
    node = predicate.get("node") if isinstance(predicate, dict) else None
    return verify_response_evidence(value, binding, pinned or None,
                                    node_public_key=node.get("public_key") if isinstance(node, dict) else None,
                                    receipt_id=predicate.get("receipt_id") if isinstance(predicate, dict) else None)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(cli_commands.commit_group)


@hookimpl
def register_routes(app: FastAPI, node: NodeContext) -> None:
    """HTTP routes of this layer (see routes.py)."""
    routes.register(app, node)
