"""`specguard attest ...`: verify, show and collect TEE evidence from the command line.

Exit codes: 0 ok, 2 usage/config, 3 parse, 4 verify, 5 validate (policy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from specguard.attest.binding import parse_nonce_hex
from specguard.attest.tee.document import EvidenceDocument, load_document, parse_time
from specguard.attest.tee.types import jsonable
from specguard.errors import ParseError, SpecguardError, UsageError, ValidationError, VerificationError


def _stage(exc: SpecguardError) -> str:
    if isinstance(exc, ParseError):
        return "parse"
    if isinstance(exc, VerificationError):
        return "verify"
    if isinstance(exc, ValidationError):
        return "validate"
    return "usage"


def _read_input(path: str) -> tuple[EvidenceDocument | None, bytes]:
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"{") and b'"public_key"' in data:
        doc = load_document(data)
        return doc, doc.evidence
    return None, data


def _certs(paths: tuple[str, ...], doc: EvidenceDocument | None) -> bytes | None:
    if paths:
        blobs = []
        for p in paths:
            raw = Path(p).read_bytes()
            if b"-----BEGIN" not in raw:
                from cryptography.hazmat.primitives.serialization import Encoding

                from specguard.attest.tee.certs import load_certificates

                raw = b"".join(c.public_bytes(Encoding.PEM) for c in load_certificates(raw, p))
            blobs.append(raw)
        return b"".join(blobs)
    return doc.certs if doc else None


def _kind(type_: str | None, doc: EvidenceDocument | None) -> str:
    if doc is not None:
        if type_ and type_ != doc.type:
            raise UsageError("--type disagrees with the evidence document", field="type", got=type_,
                             expected=doc.type)
        return doc.type
    if not type_:
        raise UsageError("--type is required for raw evidence files", field="--type",
                         expected="snp, tdx, nvidia or simulated")
    return type_


def _emit(as_json: bool, result: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps(jsonable(result), indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {json.dumps(jsonable(value)) if isinstance(value, dict | list) else value}")


@click.group(name="attest")
def attest_group() -> None:
    """Verify, show and collect TEE attestation evidence (SEV-SNP, TDX, NVIDIA)."""


@attest_group.command(name="verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "type_", help="Evidence type (snp, tdx, nvidia, simulated); implied by an evidence document.")
@click.option("--certs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Endorsement certificate(s), leaf first (VCEK/VLEK; GPU chain). Repeatable.")
@click.option("--collateral", type=click.Path(exists=True, file_okay=False),
              help="TDX collateral directory (tcbinfo*.json, qe_identity.json, tcb_signing_chain.pem, CRLs).")
@click.option("--policy", "policy_ref", help="Policy preset name or TOML file; without it only verify runs.")
@click.option("--at", "at_text", help="Verification time (RFC 3339); default now.")
@click.option("--nonce", help="Nonce (hex) for the key binding check.")
@click.option("--public-key", help="Node Ed25519 public key (hex) for the key binding check.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result object (also on failure).")
def verify_command(file: str, type_: str | None, certs: tuple[str, ...], collateral: str | None,
                   policy_ref: str | None, at_text: str | None, nonce: str | None, public_key: str | None,
                   as_json: bool) -> None:
    """Parse, verify (and with --policy, validate) one piece of evidence."""
    stage = "parse"
    try:
        from specguard.attest.tee.registry import get_evidence_type
        from specguard.attest.tee.validate import section_of
        from specguard.plugin_manager import registered_evidence_types

        doc, data = _read_input(file)
        kind = _kind(type_, doc)
        et = get_evidence_type(kind, registered_evidence_types())
        at = parse_time(at_text, "--at") if at_text else None
        parsed = et.parse(data)
        stage = "verify"
        verified = et.verify(parsed, at=at, certs=_certs(certs, doc), collateral=collateral)
        result: dict[str, Any] = {"ok": True, "stage": "verified", **verified.summary(), "validated": False}
        if policy_ref:
            stage = "validate"
            from specguard.policies import load_policy

            policy = load_policy(policy_ref)
            pk = bytes.fromhex(public_key) if public_key else (doc.public_key if doc else None)
            nn = parse_nonce_hex(nonce) if nonce else (doc.nonce if doc else None)
            et.validate(verified, section_of(policy), public_key=pk, nonce=nn, now=at,
                        collected_at=doc.collected_at if doc else None)
            result.update({"stage": "validated", "validated": True, "policy": policy.name,
                           "policy_digest": policy.digest})
        _emit(as_json, result)
    except SpecguardError as exc:
        if not as_json:
            raise
        out = {"ok": False, "stage": _stage(exc), "error": exc.to_dict()}
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        sys.exit(exc.exit_code)
    except ValueError as exc:  # malformed --public-key hex
        raise UsageError(f"bad option value during {stage}: {exc}") from exc


@attest_group.command(name="show")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "type_", help="Evidence type (snp, tdx, nvidia, simulated); implied by an evidence document.")
def show_command(file: str, type_: str | None) -> None:
    """Pretty-print every field of a piece of evidence (no verification)."""
    from specguard.attest.tee.registry import get_evidence_type
    from specguard.plugin_manager import registered_evidence_types

    doc, data = _read_input(file)
    kind = _kind(type_, doc)
    et = get_evidence_type(kind, registered_evidence_types())
    out: dict[str, Any] = {"type": kind, "fields": et.show(et.parse(data))}
    if doc is not None:
        meta = doc.to_json()
        meta.pop("evidence")
        out["document"] = {**meta, "digest": doc.digest()}
    if kind == "simulated":
        out["WARNING"] = "SIMULATED evidence: not from a TEE, proves nothing"
    click.echo(json.dumps(jsonable(out), indent=2))


@attest_group.command(name="collect")
@click.option("--nonce", required=True, help="Verifier-chosen nonce, hex (16..64 bytes).")
@click.option("--public-key", required=True, help="The node's Ed25519 public key, hex (32 bytes).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the evidence document here.")
@click.option("--no-simulated", is_flag=True, help="Fail instead of producing SIMULATED evidence without a TEE.")
def collect_command(nonce: str, public_key: str, out_path: str | None, no_simulated: bool) -> None:
    """Collect evidence on this machine (configfs-tsm / sev-guest), bound to the key and nonce.

    Without a TEE this produces SIMULATED evidence (with a warning) unless --no-simulated.
    """
    from specguard.attest.tee.collect import collect_evidence

    try:
        pk = bytes.fromhex(public_key)
    except ValueError as exc:
        raise UsageError("--public-key must be hex", field="--public-key") from exc
    doc = collect_evidence(pk, parse_nonce_hex(nonce), allow_simulated=not no_simulated)
    if doc.simulated:
        click.echo("WARNING: no TEE found; this evidence is SIMULATED and proves nothing.", err=True)
    text = json.dumps(doc.to_json(), indent=2)
    if out_path:
        Path(out_path).write_text(text + "\n")
        click.echo(f"wrote {out_path} ({doc.type}, digest {doc.digest()})", err=True)
    else:
        click.echo(text)
