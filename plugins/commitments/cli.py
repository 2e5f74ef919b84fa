"""Command-line interface of the commitments layer (`register_commands` adds these to `specguard`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from specguard.errors import UsageError

log = logging.getLogger("specguard.plugins.commitments")


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
    from specguard.attest.commitments.model import check_opening

    model_digest = None
    if model_ref is not None:
        from specguard.models import load_model

        model_digest = load_model(model_ref).digest
    click.echo(json.dumps(check_opening(commitment_hex, digest, blinding_hex, model_digest), indent=2))


@commit_group.command(name="show")
@click.option("--reveal", is_flag=True, help="Also print the digest and blinding (give only to an auditor).")
def commit_show(reveal: bool) -> None:
    """Print this node's published model commitment from $SPECGUARD_HOME."""
    from specguard.attest.commitments.model import SUITE, VERSION, load_secret, secret_path
    from specguard.keys import home_dir

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
    from specguard.attest.disclosure import disclose
    from specguard.transcript import Transcript

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
    from specguard.attest.disclosure import verify_disclosure

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
