"""Built-in integrity layer: commitment proofs (registered like any third-party plugin).

- `seal_transcript`: when a node serves a model, adds the evidence slot "commitment": a fresh
  Pedersen commitment to the node's model digest and an equality proof to the node's published
  commitment, bound to `transcript.binding_digest()`.
- `verify_evidence`: checks that slot offline against `statement["predicate"]["binding_digest"]`
  (put there by the receipts plugin) and, if given, `options["model_commitment"]` (a pinned hex
  commitment).
- `register_routes`: `GET /specguard/v1/commitment` serves the published commitment.
- `register_commands`: `specguard commit open|show|disclose|verify-disclosure`.

The node object must provide `home` (Path), `model` (with `.digest`, or None) and `key_id`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from ..errors import SpecguardError, UsageError
from ..hookspecs import hookimpl

log = logging.getLogger("specguard.plugins.commitments")

ROUTE = "/specguard/v1/commitment"


def _node_secret(node: Any):
    from ..attest.commitments.model import load_or_create_secret

    return load_or_create_secret(Path(node.home), node.model.digest)


@hookimpl
def seal_transcript(transcript, evidence, node, receipt_id):
    if node is None or getattr(node, "model", None) is None:
        return None
    from ..attest.commitments.model import EVIDENCE_SLOT, CommitmentEvidenceError, response_evidence

    secret = _node_secret(node)
    if transcript.model_digest != secret.model_digest:
        raise CommitmentEvidenceError("transcript was produced by another model than the node commits to",
                                      field="transcript.model_digest", got=transcript.model_digest,
                                      expected=secret.model_digest)
    # the proof's context binds the node key and the receipt id the evidence goes into
    evidence[EVIDENCE_SLOT] = response_evidence(secret, transcript.binding_digest(),
                                                node_public_key=node.public_key_bytes, receipt_id=receipt_id)
    return None


@hookimpl
def verify_evidence(slot, value, statement, options):
    from ..attest.commitments.model import EVIDENCE_SLOT, CommitmentEvidenceError, verify_response_evidence

    if slot != EVIDENCE_SLOT:
        return None
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    binding = predicate.get("binding_digest") if isinstance(predicate, dict) else None
    pinned = (options or {}).get("model_commitment")
    if pinned is not None and not isinstance(pinned, str):
        raise CommitmentEvidenceError("pinned model commitment must be a hex string", field="model_commitment",
                                      got=type(pinned).__name__)
    node = predicate.get("node") if isinstance(predicate, dict) else None
    return verify_response_evidence(value, binding, pinned or None,
                                    node_public_key=node.get("public_key") if isinstance(node, dict) else None,
                                    receipt_id=predicate.get("receipt_id") if isinstance(predicate, dict) else None)


@hookimpl
def register_routes(app, node):
    from fastapi.responses import JSONResponse

    from ..attest.commitments.model import published_document

    @app.get(ROUTE, tags=["specguard"], summary="This node's published model commitment")
    def published_commitment() -> Any:
        if getattr(node, "model", None) is None:
            err = UsageError("this node serves no model, so it has no model commitment", field="model")
            return JSONResponse(status_code=404, content=err.to_dict())
        try:
            secret = _node_secret(node)
        except SpecguardError as exc:
            log.error("model commitment unavailable: %s", exc.summary())
            return JSONResponse(status_code=503, content=exc.to_dict())
        return JSONResponse(content=published_document(secret, node.key_id))


@hookimpl
def register_commands(cli):
    cli.add_command(commit_group)


@click.group(name="commit")
def commit_group() -> None:
    """Pedersen commitments to the served model: open, show, selective disclosure."""


@commit_group.command(name="open")
@click.option("--commitment", "commitment_hex", required=True, help="Published commitment (96 hex).")
@click.option("--digest", required=True, help="Model digest the node revealed (sha256:...).")
@click.option("--blinding", "blinding_hex", required=True, help="Blinding r the node revealed (64 hex).")
@click.option("--model", "model_ref", default=None, help="Load this model and check its digest too.")
def commit_open(commitment_hex: str, digest: str, blinding_hex: str, model_ref: str | None) -> None:
    """Check that (digest, blinding) opens COMMITMENT, and with --model that it is that model."""
    from ..attest.commitments.model import check_opening

    model_digest = None
    if model_ref is not None:
        from ..models import load_model

        model_digest = load_model(model_ref).digest
    click.echo(json.dumps(check_opening(commitment_hex, digest, blinding_hex, model_digest), indent=2))


@commit_group.command(name="show")
@click.option("--reveal", is_flag=True, help="Also print the digest and blinding (give only to an auditor).")
def commit_show(reveal: bool) -> None:
    """Print this node's published model commitment from $SPECGUARD_HOME."""
    from ..attest.commitments.model import SUITE, VERSION, load_secret, secret_path
    from ..keys import home_dir

    home = home_dir()
    secret = load_secret(home)
    out: dict[str, Any] = {"suite": SUITE, "version": VERSION, "commitment": secret.commitment.hex(),
                           "created": secret.created, "path": str(secret_path(home))}
    if reveal:
        log.warning("revealing the model commitment opening: whoever sees it can link it to the model")
        out["model_digest"] = secret.model_digest
        out["blinding"] = secret.to_json()["blinding"]
    click.echo(json.dumps(out, indent=2))


@commit_group.command(name="disclose")
@click.option("--transcript", "transcript_path", required=True, type=click.Path(dir_okay=False),
              help="Transcript JSON (as in a response's `transcript`).")
@click.option("--positions", required=True, help="Comma-separated token positions to reveal.")
def commit_disclose(transcript_path: str, positions: str) -> None:
    """Reveal chosen per-token records with Merkle inclusion proofs."""
    from ..attest.disclosure import disclose
    from ..transcript import Transcript

    wanted = _parse_positions(positions)
    doc = _read_json(transcript_path)
    data = doc.get("transcript", doc) if isinstance(doc, dict) else doc
    try:
        transcript = Transcript.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError("file does not hold a transcript", field=transcript_path, got=str(exc)) from exc
    click.echo(json.dumps(disclose(transcript, wanted), indent=2))


@commit_group.command(name="verify-disclosure")
@click.option("--disclosure", "disclosure_path", required=True, type=click.Path(dir_okay=False))
@click.option("--root", "root_hex", required=True, help="Token-records Merkle root from a verified receipt.")
def commit_verify_disclosure(disclosure_path: str, root_hex: str) -> None:
    """Verify disclosed per-token records against a trusted root; print them."""
    from ..attest.disclosure import verify_disclosure

    records = verify_disclosure(_read_json(disclosure_path), root_hex)
    click.echo(json.dumps({"verified": True, "root": root_hex, "records": records}, indent=2))


def _parse_positions(text: str) -> list[int]:
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise UsageError("positions must be comma-separated integers", field="--positions", got=text) from exc
    if not out or any(p < 0 for p in out):
        raise UsageError("positions must be non-negative integers", field="--positions", got=text)
    return out


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError("cannot read JSON file", field=path, got=str(exc)) from exc
