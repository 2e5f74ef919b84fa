"""Verify a TDX quote: PCK chain to the pinned Intel SGX Root CA, the QE report signature
(by the PCK key), the QE report_data binding (SHA-256(attestation key || QE auth data) || 32
zero bytes), and the quote signature (by the attestation key) over header and body. With
collateral, also the TCB status (see tdx_collateral).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import der, roots
from .certs import build_chain, ecdsa_verify, name, utc
from .errors import EndorsementMismatchError, EvidenceParseError, SignatureError
from .tdx import TdxQuote
from .types import REVOCATION_NOT_CHECKED, Verified

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"


@dataclass(frozen=True)
class PckExtensions:
    """The SGX extensions of a PCK certificate that TCB evaluation needs."""

    fmspc: bytes
    pce_id: bytes
    pce_svn: int
    cpu_svn: bytes
    tcb_components: tuple[int, ...]


def read_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Decode OID 1.2.840.113741.1.13.1 (PPID, TCB, PCE-ID, FMSPC ...) of a PCK certificate."""
    raw = None
    for ext in cert.extensions:
        if ext.oid.dotted_string == SGX_EXTENSIONS_OID:
            raw = bytes(getattr(ext.value, "value", b""))
    if raw is None:
        raise EndorsementMismatchError("PCK certificate lacks the SGX extensions", field=SGX_EXTENSIONS_OID)
    try:
        fields: dict[str, tuple[int, bytes]] = {}
        for tag, child in der.read_children(der.read_single(raw, der.SEQUENCE, "SGX extensions"), "SGX"):
            if tag != der.SEQUENCE:
                continue
            parts = der.read_children(child, "SGX extension")
            if len(parts) != 2 or parts[0][0] != der.OID:
                continue
            fields[der.decode_oid(parts[0][1], "SGX OID")] = parts[1]
        comps = [0] * 16
        pce_svn = -1
        cpu_svn = b""
        for _tag, child in der.read_children(fields[SGX_EXTENSIONS_OID + ".2"][1], "TCB"):
            parts = der.read_children(child, "TCB component")
            oid = der.decode_oid(parts[0][1], "TCB OID")
            index = int(oid.rsplit(".", 1)[1])
            if 1 <= index <= 16:
                comps[index - 1] = der.decode_integer(parts[1][1], "TCB component")
            elif index == 17:
                pce_svn = der.decode_integer(parts[1][1], "PCESVN")
            elif index == 18:
                cpu_svn = parts[1][1]
        return PckExtensions(
            fmspc=fields[SGX_EXTENSIONS_OID + ".4"][1],
            pce_id=fields[SGX_EXTENSIONS_OID + ".3"][1],
            pce_svn=pce_svn,
            cpu_svn=cpu_svn,
            tcb_components=tuple(comps),
        )
    except (KeyError, IndexError, ValueError, EvidenceParseError) as exc:
        raise EndorsementMismatchError(f"PCK certificate SGX extensions are malformed: {exc}",
                                       field=SGX_EXTENSIONS_OID) from exc


def _p256_key(raw: bytes, field: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError as exc:
        raise SignatureError("attestation key is not a valid P-256 point", field=field, got=raw) from exc


def _check_sig(key: ec.EllipticCurvePublicKey, sig: bytes, message: bytes, field: str, what: str) -> None:
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not ecdsa_verify(key, r, s, message, hashes.SHA256()):
        raise SignatureError(f"{what} does not verify", field=field, expected="ECDSA P-256 / SHA-256 signature")


def verify_tdx(
    quote: TdxQuote,
    *,
    at: dt.datetime | None = None,
    trust: roots.TrustStore | None = None,
    collateral: object = None,
) -> Verified:
    """Verify `quote` at time `at` (default now); with `collateral` (a TdxCollateral or a
    directory path) also verify it and derive the TCB status."""
    at = utc(at)
    trust = trust or roots.intel()
    if not quote.pck_chain:
        raise SignatureError("quote carries no PCK certificate", field="pck_certification_data")
    leaf = quote.pck_chain[0]
    chain = build_chain(leaf, [*quote.pck_chain[1:], *trust.intermediates], trust.roots, at, role="PCK")
    pck_key = leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or pck_key.curve.name != "secp256r1":
        raise SignatureError("PCK key is not ECDSA P-256", field="PCK key", got=type(pck_key).__name__)
    _check_sig(pck_key, quote.qe_report_signature, quote.qe_report.raw, "qe_report_signature",
               f"QE report signature (by PCK {name(leaf)})")
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.report_data != expected:
        raise SignatureError("QE report_data does not bind the attestation key", field="qe_report.report_data",
                             got=quote.qe_report.report_data,
                             expected="SHA-256(attestation_key || qe_auth_data) || 32 zero bytes")
    att_key = _p256_key(quote.attestation_key, "attestation_key")
    _check_sig(att_key, quote.signature, quote.signed_bytes, "quote_signature",
               "quote signature (by the attestation key over header and body)")
    pck = read_pck_extensions(leaf)
    tcb_status = None
    advisories: tuple[str, ...] = ()
    notes: list[str] = []
    if collateral is not None:
        from .tdx_collateral import evaluate_collateral, load_collateral

        coll = load_collateral(collateral) if not hasattr(collateral, "tcb_info") else collateral
        result = evaluate_collateral(quote, chain, pck, coll, at=at, trust=trust)
        tcb_status, advisories = result.status, result.advisories
        notes.extend(result.notes)
    else:
        notes.append(f"no collateral given: TCB status not evaluated, {REVOCATION_NOT_CHECKED} (no PCK CRLs)")
    b = quote.body
    claims = {
        "report_data": b.report_data,
        "debug": b.debug,
        "mr_td": b.mr_td,
        "rtmr0": b.rtmrs[0],
        "rtmr1": b.rtmrs[1],
        "rtmr2": b.rtmrs[2],
        "rtmr3": b.rtmrs[3],
        "mr_seam": b.mr_seam,
        "mr_config_id": b.mr_config_id,
        "mr_owner": b.mr_owner,
        "mr_owner_config": b.mr_owner_config,
        "td_attributes": b.td_attributes,
        "xfam": b.xfam,
        "tee_tcb_svn": b.tee_tcb_svn,
        "qe_isv_svn": quote.qe_report.isv_svn,
        "fmspc": pck.fmspc,
        "quote_version": quote.header.version,
    }
    return Verified("tdx", quote, claims, at, tuple(chain.subjects()), tcb_status=tcb_status,
                    advisories=advisories, notes=tuple(notes), revocation_checked=collateral is not None)
