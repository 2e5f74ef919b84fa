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
@click.option("--disclosure", "disclosure_path", required=True, type=click.Path(dir_okay=False),
              help="The disclosure JSON to verify (from `specguard commit disclose`).")
@click.option("--receipt", "receipt_path", type=click.Path(exists=True, dir_okay=False),
              help="The receipt (or a response holding one) the disclosure is for: its verified "
                   "token-records root and count are used.")
@click.option("--trusted-key", "trusted_key", multiple=True, help="Pinned node key for --receipt (hex or file).")
@click.option("--allow-unpinned", is_flag=True, help="Accept the key the receipt names (integrity only).")
@click.option("--root", "root_hex", help="Token-records Merkle root from a receipt you verified (with --tree-size).")
@click.option("--tree-size", type=click.IntRange(0), help="Token-records count from the same receipt.")
def commit_verify_disclosure(disclosure_path: str, receipt_path: str | None, trusted_key: tuple[str, ...],
                             allow_unpinned: bool, root_hex: str | None, tree_size: int | None) -> None:
    """Verify disclosed per-token records against a receipt's signed root and tree size; print them.

    Give --receipt (verified here: signature and log inclusion) or both --root and --tree-size
    from a receipt you verified; the disclosure's own tree_size is never trusted.
    """
    from specguard.attest.disclosure import verify_disclosure

    if (receipt_path is None) == (root_hex is None):
        raise UsageError("give exactly one of --receipt and --root", field="--receipt/--root")
    if receipt_path is not None:
        if tree_size is not None:
            raise UsageError("--tree-size comes from the receipt; give it only with --root", field="--tree-size")
        root_hex, tree_size, receipt_id = _receipt_root(receipt_path, trusted_key, allow_unpinned)
    elif tree_size is None:
        raise UsageError("--root needs --tree-size (the receipt's token_records_count)", field="--tree-size")
    records = verify_disclosure(_read_json(disclosure_path), root_hex, tree_size)
    out: dict[str, Any] = {"verified": True, "root": root_hex, "tree_size": tree_size, "records": records}
    if receipt_path is not None:
        out["receipt_id"] = receipt_id
    click.echo(json.dumps(out, indent=2))


def _receipt_root(path: str, trusted_key: tuple[str, ...], allow_unpinned: bool) -> tuple[str, int, str]:
    """The token-records root and count of a receipt verified here (signature, digests, log)."""
    from specguard.attest.options import VerifyOptions
    from specguard.attest.receipts import load_json_file, verify_receipt
    from specguard.key_args import parse_key_arg

    doc = load_json_file(Path(path), "receipt")
    if isinstance(doc, dict) and "envelope" not in doc and isinstance(doc.get("specguard"), dict):
        doc = doc["specguard"].get("receipt", doc)
    options = VerifyOptions(trusted_keys=tuple(parse_key_arg(k) for k in trusted_key), allow_unpinned=allow_unpinned)
    verified = verify_receipt(doc, options)
    if "token_records_root" not in verified.predicate:  # a format-2 receipt without the requester's disclosure
        from specguard.attest.receipts import ReceiptSecretError

        raise ReceiptSecretError("the receipt seals its token-records root: give the requester's receipt (with "
                                 "its disclosure)", field="receipt.disclosure")
    return (verified.predicate["token_records_root"], verified.predicate["token_records_count"],
            verified.receipt_id)


def _parse_positions(text: str) -> list[int]:
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise UsageError("positions must be comma-separated integers", field="--positions", got=text) from exc
    if not out or any(p < 0 for p in out):
        raise UsageError("positions must be non-negative integers", field="--positions", got=text)
    return out


def _read_json(path: str) -> Any:
    from specguard.attest.jsonio import load_json_file

    return load_json_file(path, path)  # ParseError (exit 3) on unreadable or bad JSON
