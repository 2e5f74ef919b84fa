"""TDX verification collateral (Intel PCS): TCB info, QE identity, TCB-signing chain, CRLs.

`tcbInfo` and `enclaveIdentity` are signed (ECDSA P-256, raw r||s hex in `signature`) over
the exact bytes of their JSON value as it appears in the file, so the raw span is extracted
rather than re-serialized. Everything is checked at the verification time `at`: signing chain
to the pinned Intel root, issueDate..nextUpdate windows, CRL signatures and windows, PCK and
intermediate revocation. The TCB status follows Intel's QVL: the first TCB level whose SGX
components and PCESVN the PCK certificate meets and whose TDX components TEE_TCB_SVN meets
(from index 2 when the TDX module version TEE_TCB_SVN[1] is non-zero); then the TDX module
identity (id "TDX_%02X" of the version) and the QE identity levels can lower it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import roots
from .certs import (
    Chain,
    build_chain,
    check_not_revoked,
    ecdsa_verify,
    load_certificates,
    load_crl,
    utc,
    verify_crl,
)
from .errors import CollateralError, CollateralExpiredError, EvidenceParseError, EvidenceVerificationError
from .tdx import TdxQuote


@dataclass(frozen=True)
class SignedJson:
    """One signed collateral document: the parsed body, its exact signed bytes, the signature."""

    key: str
    body: dict[str, Any]
    signed: bytes
    signature: bytes


@dataclass(frozen=True)
class TdxCollateral:
    tcb_info: SignedJson
    qe_identity: SignedJson
    signing_chain: tuple[x509.Certificate, ...]
    pck_crl: x509.CertificateRevocationList | None = None
    root_crl: x509.CertificateRevocationList | None = None
    extra_tcb_infos: tuple[SignedJson, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CollateralResult:
    status: str
    advisories: tuple[str, ...]
    notes: tuple[str, ...]


def parse_signed_json(text: bytes, key: str, context: str) -> SignedJson:
    """Split `{"<key>": {...}, "signature": "<hex>"}` keeping the exact bytes of the value."""
    try:
        s = text.decode("utf-8")
        decoder = json.JSONDecoder()
        i = _ws(s, 0)
        if s[i] != "{":
            raise ValueError("not a JSON object")
        i += 1
        spans: dict[str, tuple[int, int, Any]] = {}
        while True:
            i = _ws(s, i)
            if s[i] == "}":
                break
            k, i = decoder.raw_decode(s, i)
            i = _ws(s, i)
            if s[i] != ":":
                raise ValueError("expected ':'")
            i = _ws(s, i + 1)
            start = i
            v, i = decoder.raw_decode(s, i)
            spans[k] = (start, i, v)
            i = _ws(s, i)
            if s[i] == ",":
                i += 1
        body_span = spans[key]
        sig = bytes.fromhex(spans["signature"][2])
        if not isinstance(body_span[2], dict) or len(sig) != 64:
            raise ValueError(f"{key} must be an object and signature 64 bytes")
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CollateralError(f"{context} is malformed: {exc}", field=context) from exc
    return SignedJson(key, body_span[2], s[body_span[0] : body_span[1]].encode("utf-8"), sig)


def _ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def load_collateral(source: Any) -> TdxCollateral:
    """Collateral from a directory: `tcbinfo*.json` (any number; matched by FMSPC),
    `qe_identity.json`, `tcb_signing_chain.pem`, `pck_platform_crl.der` or
    `pck_processor_crl.der`, `root_ca_crl.der`."""
    folder = Path(source)
    if not folder.is_dir():
        raise CollateralError("collateral must be a directory", field="collateral", got=str(folder))

    def read(name: str, required: bool = True) -> bytes | None:
        p = folder / name
        if not p.is_file():
            if required:
                raise CollateralError(f"collateral file {name} is missing", field=f"collateral/{name}")
            return None
        return p.read_bytes()

    tcb_infos = [parse_signed_json(p.read_bytes(), "tcbInfo", p.name) for p in sorted(folder.glob("tcbinfo*.json"))]
    if not tcb_infos:
        raise CollateralError("no tcbinfo*.json in the collateral directory", field="collateral/tcbinfo*.json")
    qe = parse_signed_json(read("qe_identity.json") or b"", "enclaveIdentity", "qe_identity.json")
    try:
        chain = tuple(load_certificates(read("tcb_signing_chain.pem") or b"", "tcb_signing_chain.pem"))
    except EvidenceParseError as exc:
        raise CollateralError(exc.message, field="collateral/tcb_signing_chain.pem") from exc
    pck_raw = read("pck_platform_crl.der", False) or read("pck_processor_crl.der", False)
    root_raw = read("root_ca_crl.der", False)
    return TdxCollateral(
        tcb_info=tcb_infos[0],
        qe_identity=qe,
        signing_chain=chain,
        pck_crl=load_crl(pck_raw, "PCK CRL") if pck_raw else None,
        root_crl=load_crl(root_raw, "root CA CRL") if root_raw else None,
        extra_tcb_infos=tuple(tcb_infos[1:]),
    )


def _date(body: dict, key: str, context: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(body[key]).replace("Z", "+00:00")).astimezone(dt.UTC)
    except (KeyError, ValueError) as exc:
        raise CollateralError(f"{context}.{key} is missing or not a date", field=f"{context}.{key}") from exc


def verify_signed_json(doc: SignedJson, key: ec.EllipticCurvePublicKey, at: dt.datetime, context: str) -> None:
    """Signature over the exact bytes, and issueDate <= at <= nextUpdate."""
    r = int.from_bytes(doc.signature[:32], "big")
    s = int.from_bytes(doc.signature[32:], "big")
    if not ecdsa_verify(key, r, s, doc.signed, hashes.SHA256()):
        raise CollateralError(f"{context} signature does not verify with the TCB signing key",
                              field=f"{context}.signature")
    issue, nxt = _date(doc.body, "issueDate", context), _date(doc.body, "nextUpdate", context)
    if not issue <= utc(at) <= nxt:
        raise CollateralExpiredError(f"{context} is not valid at the verification time",
                                     field=f"{context}.nextUpdate", got=utc(at).isoformat(),
                                     expected=f"{issue.isoformat()} .. {nxt.isoformat()}")


def evaluate_collateral(quote: TdxQuote, pck_chain: Chain, pck: Any, coll: TdxCollateral, *,
                        at: dt.datetime, trust: roots.TrustStore | None = None) -> CollateralResult:
    """Verify `coll` at `at` and return the quote's TCB status."""
    trust = trust or roots.intel()
    if not coll.signing_chain:
        raise CollateralError("TCB signing chain is empty", field="tcb_signing_chain")
    signing = build_chain(coll.signing_chain[0], [*coll.signing_chain[1:], *trust.intermediates], trust.roots,
                          at, role="TCB signing")
    key = signing.leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CollateralError("TCB signing key is not ECDSA", field="tcb_signing_chain")
    tcb_doc = next((d for d in (coll.tcb_info, *coll.extra_tcb_infos)
                    if str(d.body.get("fmspc", "")).lower() == pck.fmspc.hex()), None)
    if tcb_doc is None:
        raise CollateralError("no TCB info for the PCK certificate's FMSPC", field="tcbInfo.fmspc",
                              got=[d.body.get("fmspc") for d in (coll.tcb_info, *coll.extra_tcb_infos)],
                              expected=pck.fmspc.hex())
    verify_signed_json(tcb_doc, key, at, "tcbInfo")
    verify_signed_json(coll.qe_identity, key, at, "enclaveIdentity")
    tcb = tcb_doc.body
    if tcb.get("id") != "TDX" or tcb.get("version") != 3:
        raise CollateralError("TCB info is not TDX version 3", field="tcbInfo.id", got=(tcb.get("id"), tcb.get("version")))
    if str(tcb.get("pceId", "")).lower() != pck.pce_id.hex():
        raise CollateralError("TCB info PCE ID does not match the PCK certificate", field="tcbInfo.pceId",
                              got=tcb.get("pceId"), expected=pck.pce_id.hex())
    _check_crls(pck_chain, coll, at, trust)
    try:
        status, advisories = tcb_status(quote, pck, tcb)
        qe_status = qe_identity_status(quote, coll.qe_identity.body)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CollateralError(f"collateral JSON has an unexpected shape: {exc}", field="collateral") from exc
    final = converge_qe(status, qe_status)
    return CollateralResult(final, advisories, (f"platform TCB status {status}, QE identity status {qe_status}",))


def _check_crls(pck_chain: Chain, coll: TdxCollateral, at: dt.datetime, trust: roots.TrustStore) -> None:
    if coll.pck_crl is None or coll.root_crl is None:
        raise CollateralError("collateral needs both the PCK CRL and the root CA CRL",
                              field="collateral CRLs", got={"pck_crl": coll.pck_crl is not None,
                                                            "root_crl": coll.root_crl is not None})
    certs = pck_chain.certificates
    if len(certs) < 3:
        raise CollateralError("PCK chain must have leaf, intermediate CA and root", field="PCK chain", got=len(certs))
    verify_crl(coll.root_crl, pck_chain.root, at, "root CA")
    verify_crl(coll.pck_crl, certs[1], at, "PCK")
    check_not_revoked(certs[0], coll.pck_crl, "PCK")
    for inter in certs[1:-1]:
        check_not_revoked(inter, coll.root_crl, "PCK intermediate")


def _svns(items: list[dict]) -> list[int]:
    return [int(c["svn"]) for c in items]


def tcb_status(quote: TdxQuote, pck: Any, tcb: dict) -> tuple[str, tuple[str, ...]]:
    """Platform + TDX module TCB status of `quote` against TCB info `tcb` (a signed body)."""
    tee = quote.body.tee_tcb_svn
    start = 2 if tee[1] > 0 else 0
    level_status = None
    advisories: tuple[str, ...] = ()
    for level in tcb["tcbLevels"]:
        t = level["tcb"]
        sgx = _svns(t["sgxtcbcomponents"])
        if any(p < want for p, want in zip(pck.tcb_components, sgx, strict=True)) or pck.pce_svn < int(t["pcesvn"]):
            continue
        tdx = _svns(t["tdxtcbcomponents"])
        if any(tee[i] < tdx[i] for i in range(start, 16)):
            continue
        level_status = str(level["tcbStatus"])
        advisories = tuple(level.get("advisoryIDs", ()))
        break
    if level_status is None:
        raise EvidenceVerificationError(
            "no TCB level in the TCB info matches this platform (TCB status unrecognized)",
            field="tcbInfo.tcbLevels", got={"pck_svns": list(pck.tcb_components), "tee_tcb_svn": tee.hex()})
    module_status = _module_status(quote, tcb)
    if module_status is not None:
        level_status = _converge_module(level_status, module_status)
    return level_status, advisories


def _module_status(quote: TdxQuote, tcb: dict) -> str | None:
    tee = quote.body.tee_tcb_svn
    version, isvsvn = tee[1], tee[0]
    if version == 0:
        module = tcb.get("tdxModule")
        if module:
            _check_module_identity(quote, module, "tcbInfo.tdxModule")
        return None
    ident_id = f"TDX_{version:02X}"
    ident = next((m for m in tcb.get("tdxModuleIdentities", []) if m.get("id") == ident_id), None)
    if ident is None:
        raise EvidenceVerificationError("TDX module identity not found in the TCB info",
                                        field="tcbInfo.tdxModuleIdentities", got=ident_id)
    _check_module_identity(quote, ident, f"tdxModuleIdentities[{ident_id}]")
    for level in ident["tcbLevels"]:
        if isvsvn >= int(level["tcb"]["isvsvn"]):
            return str(level["tcbStatus"])
    raise EvidenceVerificationError("TDX module SVN is below every level of its identity",
                                    field="TEE_TCB_SVN[0]", got=isvsvn)


def _check_module_identity(quote: TdxQuote, ident: dict, context: str) -> None:
    b = quote.body
    if bytes.fromhex(ident["mrsigner"]) != b.mr_signer_seam:
        raise EvidenceVerificationError("MRSIGNERSEAM does not match the TDX module identity",
                                        field="MRSIGNERSEAM", got=b.mr_signer_seam, expected=ident["mrsigner"])
    mask = int(ident["attributesMask"], 16)
    if int.from_bytes(b.seam_attributes, "big") & mask != int(ident["attributes"], 16) & mask:
        raise EvidenceVerificationError("SEAMATTRIBUTES do not match the TDX module identity",
                                        field="SEAMATTRIBUTES", got=b.seam_attributes, expected=ident["attributes"])


def _converge_module(platform: str, module: str) -> str:
    if module == "Revoked" or platform == "Revoked":
        return "Revoked"
    if module == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return platform


def qe_identity_status(quote: TdxQuote, ident: dict) -> str:
    """TCB status of the quoting enclave against the QE identity (identity fields must match)."""
    qe = quote.qe_report
    if ident.get("id") != "TD_QE":
        raise CollateralError("QE identity is not for the TD quoting enclave", field="enclaveIdentity.id",
                              got=ident.get("id"), expected="TD_QE")
    if bytes.fromhex(ident["mrsigner"]) != qe.mr_signer:
        raise EvidenceVerificationError("QE MRSIGNER does not match the QE identity", field="qe_report.mr_signer",
                                        got=qe.mr_signer, expected=ident["mrsigner"])
    if int(ident["isvprodid"]) != qe.isv_prod_id:
        raise EvidenceVerificationError("QE ISVPRODID does not match the QE identity",
                                        field="qe_report.isv_prod_id", got=qe.isv_prod_id,
                                        expected=ident["isvprodid"])
    misc_mask = int(ident["miscselectMask"], 16)
    if qe.misc_select & misc_mask != int(ident["miscselect"], 16) & misc_mask:
        raise EvidenceVerificationError("QE MISCSELECT does not match the QE identity",
                                        field="qe_report.misc_select", got=qe.misc_select)
    attr_mask = bytes.fromhex(ident["attributesMask"])
    attrs = bytes.fromhex(ident["attributes"])
    if bytes(a & m for a, m in zip(qe.attributes, attr_mask, strict=True)) != bytes(
            a & m for a, m in zip(attrs, attr_mask, strict=True)):
        raise EvidenceVerificationError("QE ATTRIBUTES do not match the QE identity",
                                        field="qe_report.attributes", got=qe.attributes)
    for level in ident["tcbLevels"]:
        if qe.isv_svn >= int(level["tcb"]["isvsvn"]):
            return str(level["tcbStatus"])
    return "Revoked"


def converge_qe(platform: str, qe: str) -> str:
    """Combine the platform/module status with the QE identity status (QVL rules)."""
    if qe == "Revoked" or platform == "Revoked":
        return "Revoked"
    if qe == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return platform
