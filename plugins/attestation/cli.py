"""`specguard attest ...`: verify, show and collect TEE evidence from the command line.

Exit codes: 0 ok, 2 usage/config, 3 parse, 4 verify, 5 validate (policy).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
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
        if result.get("simulated"):  # said first, on stdout: before "ok: True" is read as "attested"
            click.echo("SIMULATED: this evidence is not from a TEE and proves nothing")
        for key, value in result.items():
            click.echo(f"{key}: {json.dumps(jsonable(value)) if isinstance(value, dict | list) else value}")


@click.group(name="attest")
def attest_group() -> None:
    """Verify, show and collect TEE attestation evidence (SEV-SNP, TDX, NVIDIA)."""


def _policy(policy_ref: str | None, reference_values: str | None) -> Any:
    from specguard.policies import load_policy

    if policy_ref is None and reference_values is None:
        return None
    return load_policy(policy_ref or "strict").with_reference_values(reference_values)


def _policy_result(policy: Any) -> dict[str, Any]:
    from specguard.attest.tee.validate import section_of

    out: dict[str, Any] = {"policy": policy.name, "policy_digest": policy.digest}
    rv = section_of(policy).reference_values
    if rv is not None:
        out["reference_values"] = {"source": rv.source, "digest": rv.digest, "name": rv.name, "example": rv.example}
    return out


@dataclass(frozen=True)
class AttestVerifyArgs:
    """The options of `specguard attest verify` (see its --help), built once by `from_cli`."""

    file: str
    type_: str | None = None
    certs: tuple[str, ...] = ()
    collateral: str | None = None
    crls: tuple[str, ...] = ()
    policy_ref: str | None = None
    reference_values: str | None = None
    at_text: str | None = None
    nonce: str | None = None
    public_key: str | None = None
    report_data: str | None = None
    as_json: bool = False

    def __post_init__(self) -> None:
        if self.crls and self.collateral:
            raise UsageError("give AMD CRLs with --crl or --collateral, not both", field="--crl")

    @classmethod
    def from_cli(cls, **options: Any) -> AttestVerifyArgs:
        """From the click command's keyword options (repeatable options as tuples)."""
        return cls(**{**options, "certs": tuple(options.get("certs") or ()), "crls": tuple(options.get("crls") or ())})


@attest_group.command(name="verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "type_", help="Evidence type (snp, tdx, nvidia, simulated); implied by an evidence document.")
@click.option("--certs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Endorsement certificate(s), leaf first (VCEK/VLEK; GPU chain). Repeatable.")
@click.option("--collateral", type=click.Path(exists=True),
              help="TDX collateral directory (tcbinfo*.json, qe_identity.json, tcb_signing_chain.pem, CRLs); "
                   "for SEV-SNP an AMD CRL file or a folder of *.crl.")
@click.option("--crl", "crls", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="AMD CRL (DER or PEM, as AMD KDS serves it) to check the SEV-SNP chain against. Repeatable.")
@click.option("--policy", "policy_ref", help="Policy preset name or TOML file; without it only verify runs.")
@click.option("--reference-values", "reference_values", type=click.Path(exists=True, dir_okay=False),
              help="Reference values (JSON/TOML) the policy's rules compare with; implies --policy strict "
                   "when no --policy is given.")
@click.option("--at", "at_text", help="Verification time (RFC 3339); default now.")
@click.option("--nonce", help="Nonce (hex) for the key binding check.")
@click.option("--public-key", help="Node Ed25519 public key (hex) for the key binding check.")
@click.option("--report-data", "report_data", help="Expected REPORT_DATA (hex, 64 bytes) of raw CPU evidence whose "
              "binding is not specguard's; compared exactly instead of the key binding.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result object (also on failure).")
def verify_command(**options: Any) -> None:
    """Parse, verify (and with --policy or --reference-values, validate) one piece of evidence.

    A node evidence document is checked as node attestation: GPU evidence alone is refused, and
    GPU evidence in its `gpus` must carry the nonce derived from the CPU evidence.
    """
    as_json = bool(options.get("as_json"))
    progress = _Progress()
    try:
        _emit(as_json, _verify_evidence(AttestVerifyArgs.from_cli(**options), progress))
    except SpecguardError as exc:
        if not as_json:
            raise
        out = {"ok": False, "stage": _stage(exc), "error": exc.to_dict()}
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        sys.exit(exc.exit_code)
    except ValueError as exc:  # malformed --public-key / --report-data hex
        raise UsageError(f"bad option value during {progress.stage}: {exc}") from exc


@dataclass
class _Progress:
    """How far `attest verify` got (named in a bad option value's message)."""

    stage: str = "parse"


def _verify_evidence(args: AttestVerifyArgs, progress: _Progress) -> dict[str, Any]:
    from specguard.attest.tee.document import verify_document_evidence
    from specguard.attest.tee.registry import get_evidence_type
    from specguard.plugin_manager import registered_evidence_types

    doc, data = _read_input(args.file)
    kind = _kind(args.type_, doc)
    et = get_evidence_type(kind, registered_evidence_types())
    at = parse_time(args.at_text, "--at") if args.at_text else None
    coll: Any = list(args.crls) if args.crls else args.collateral
    policy = _policy(args.policy_ref, args.reference_values)
    expected_rd = _expected_report_data(args.report_data, raw_cpu=doc is None and not getattr(et, "gpu", False))
    if doc is not None:
        if args.certs:
            doc = replace(doc, certs=_certs(args.certs, None))
        progress.stage = "verify"
        verified = verify_document_evidence(doc, at=at, collateral=coll, types=registered_evidence_types())
    else:
        parsed = et.parse(data)
        progress.stage = "verify"
        verified = et.verify(parsed, at=at, certs=_certs(args.certs, doc), collateral=coll)
    result: dict[str, Any] = {"ok": True, "stage": "verified", **verified.summary(), "validated": False}
    if policy is not None:
        progress.stage = "validate"
        _validate(args, et, doc, verified, policy, at, expected_rd)
        result.update({"stage": "validated", "validated": True, **_policy_result(policy)})
    return result


def _expected_report_data(report_data: str | None, *, raw_cpu: bool) -> bytes | None:
    """--report-data as 64 bytes, for raw CPU evidence only (None when not given)."""
    if report_data is None:
        return None
    if not raw_cpu:
        raise UsageError("--report-data applies to raw CPU evidence only (documents bind the node key; GPU "
                         "evidence binds nothing alone)", field="--report-data")
    expected = bytes.fromhex(report_data)
    if len(expected) != 64:
        raise UsageError("--report-data must be 64 bytes (128 hex digits)", field="--report-data",
                         got=len(expected), expected=64)
    return expected


def _validate(args: AttestVerifyArgs, et: Any, doc: EvidenceDocument | None, verified: Any, policy: Any,
              at: Any, expected_rd: bytes | None) -> None:
    """The policy's rules: a document binds its own key and nonce; raw evidence the options' ones."""
    from specguard.attest.tee.document import validate_document
    from specguard.plugin_manager import registered_evidence_types

    if doc is not None:
        if args.public_key or args.nonce:
            raise UsageError("--public-key/--nonce come from the evidence document", field="--public-key")
        validate_document(verified, doc, policy, now=at, types=registered_evidence_types())
        return
    pk = bytes.fromhex(args.public_key) if args.public_key else None
    nn = parse_nonce_hex(args.nonce) if args.nonce else None
    kwargs: dict[str, Any] = {"expected_report_data": expected_rd} if expected_rd is not None else {}
    et.validate(verified, policy.attestation, public_key=pk, nonce=nn, now=at, **kwargs)


@attest_group.command(name="gpu-nonce")
@click.argument("document", type=click.Path(exists=True, dir_okay=False))
def gpu_nonce_command(document: str) -> None:
    """Print the SPDM nonce (hex) to request GPU evidence with, for a node evidence DOCUMENT.

    GPU evidence counts only next to the CPU evidence it names: nonce = SHA-256(tag, SHA-256(CPU
    evidence), node key). Collect it with NVIDIA's tools, then `specguard attest attach-gpu`.
    """
    doc = load_document(Path(document))
    click.echo(doc.gpu_nonce().hex())


@attest_group.command(name="attach-gpu")
@click.argument("document", type=click.Path(exists=True, dir_okay=False))
@click.option("--gpu-evidence", "gpu_evidence", required=True, type=click.Path(exists=True, dir_okay=False),
              help="GPU evidence (NVIDIA SPDM request || response, raw or hex) collected on the gpu-nonce.")
@click.option("--gpu-certs", "gpu_certs", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The GPU's certificate chain (PEM, attestation certificate first).")
@click.option("--type", "type_", default="nvidia", show_default=True, help="GPU evidence type.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Write the new document here.")
def attach_gpu_command(document: str, gpu_evidence: str, gpu_certs: str, type_: str, out_path: str) -> None:
    """Add GPU evidence to a node evidence DOCUMENT (its nonce must be `attest gpu-nonce DOCUMENT`)."""
    from specguard.attest.tee.document import GpuEvidence
    from specguard.attest.tee.errors import KeyBindingError
    from specguard.attest.tee.registry import get_evidence_type

    doc = load_document(Path(document))
    gt = get_evidence_type(type_)
    if not getattr(gt, "gpu", False):
        raise UsageError("not a GPU evidence type", field="--type", got=type_, expected="nvidia")
    raw = Path(gpu_evidence).read_bytes()
    parsed = gt.parse(raw)
    got = getattr(parsed, "request_nonce", None)
    if got != doc.gpu_nonce():
        raise KeyBindingError("GPU evidence was not collected on this document's GPU nonce", field="nonce",
                              got=got, expected=doc.gpu_nonce())
    gpu = GpuEvidence(type_, raw, Path(gpu_certs).read_bytes())
    new = replace(doc, gpus=(*doc.gpus, gpu))
    Path(out_path).write_text(json.dumps(new.to_json(), indent=2) + "\n")
    click.echo(f"wrote {out_path} ({new.type} + {len(new.gpus)} GPU, digest {new.digest()})", err=True)


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
