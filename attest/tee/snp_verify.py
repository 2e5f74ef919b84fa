"""Verify a SEV-SNP report: VCEK/VLEK chain to a pinned AMD ARK, report signature, and the
endorsement key's extensions (reported TCB equals the certificate's TCB; hardware ID equals
CHIP_ID unless the chip ID is masked). AMD CRLs (as AMD KDS serves them at
`/vcek/v1/{product}/crl`, signed by the ARK) are checked when given: each must be issued by a
certificate of the chain, signed by it and current at `at`, and no certificate it covers
(ASK/ASVK, or a VCEK/VLEK under a CRL of its issuer) may be on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import der, roots
from .certs import (
    Chain,
    build_chain,
    check_not_revoked,
    load_certificates,
    load_crl,
    name,
    utc,
    verify_crl,
)
from .errors import (
    CollateralError,
    EndorsementMismatchError,
    EvidenceParseError,
    EvidenceVerificationError,
    SignatureError,
)
from .snp import SnpReport, TcbVersion
from .types import REVOCATION_NOT_CHECKED, Verified

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = AMD_OID + ".1"
OID_PRODUCT_NAME = AMD_OID + ".2"
OID_BL_SPL = AMD_OID + ".3.1"
OID_TEE_SPL = AMD_OID + ".3.2"
OID_SNP_SPL = AMD_OID + ".3.3"
OID_UCODE_SPL = AMD_OID + ".3.8"
OID_FMC_SPL = AMD_OID + ".3.9"
OID_HWID = AMD_OID + ".4"
OID_CSP_ID = AMD_OID + ".5"


@dataclass(frozen=True)
class AmdEndorsement:
    """The AMD-specific extensions of a VCEK or VLEK certificate."""

    product: str
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    hwid: bytes | None
    csp_id: str | None

    @property
    def turin(self) -> bool:
        return self.product.startswith("Turin")


def _ext(cert: x509.Certificate, oid: str) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == oid:
            value = ext.value
            return bytes(getattr(value, "value", b""))
    return None


def _int_ext(cert: x509.Certificate, oid: str, label: str) -> int | None:
    raw = _ext(cert, oid)
    if raw is None:
        return None
    return der.decode_integer(der.read_single(raw, der.INTEGER, label), label)


def read_endorsement(cert: x509.Certificate) -> AmdEndorsement:
    """Decode the AMD extensions of a VCEK/VLEK certificate (typed errors if malformed)."""
    try:
        product_raw = _ext(cert, OID_PRODUCT_NAME)
        product = ""
        if product_raw is not None:
            product = der.read_single(product_raw, der.IA5_STRING, "productName").decode("ascii")
        spl = {}
        for label, oid in (("bootloader", OID_BL_SPL), ("tee", OID_TEE_SPL), ("snp", OID_SNP_SPL),
                           ("microcode", OID_UCODE_SPL)):
            value = _int_ext(cert, oid, label)
            if value is None:
                raise EndorsementMismatchError(
                    "endorsement certificate lacks a TCB extension", field=f"VCEK {label} SPL ({oid})"
                )
            spl[label] = value
        fmc = _int_ext(cert, OID_FMC_SPL, "fmc")
        hwid_raw = _ext(cert, OID_HWID)
        hwid = None
        if hwid_raw is not None:
            # Real VCEKs carry the raw 64 (Milan/Genoa) or 8 (Turin) bytes; accept a DER OCTET STRING too.
            if len(hwid_raw) in (10, 66) and hwid_raw[0] == der.OCTET_STRING and hwid_raw[1] == len(hwid_raw) - 2:
                hwid = hwid_raw[2:]
            else:
                hwid = hwid_raw
        csp_raw = _ext(cert, OID_CSP_ID)
        csp = None
        if csp_raw is not None:
            _tag, value, _end = der.read_tlv(csp_raw, 0, "cspId")
            csp = value.decode("utf-8", "replace")
    except (EvidenceParseError, UnicodeDecodeError) as exc:
        raise EndorsementMismatchError(f"endorsement certificate extension is malformed: {exc}",
                                       field="VCEK extensions") from exc
    return AmdEndorsement(product, fmc=fmc, hwid=hwid, csp_id=csp, **spl)


def _product_line(product: str) -> str:
    return product.split("-", 1)[0]


def verify_snp(
    report: SnpReport,
    *,
    at: dt.datetime | None = None,
    trust: roots.TrustStore | None = None,
    certs: bytes | list[x509.Certificate] | None = None,
    crls: Iterable[x509.CertificateRevocationList] | None = None,
) -> Verified:
    """Verify `report` with its endorsement certificate(s) at time `at` (default now).

    `certs`: the VCEK/VLEK (DER or PEM), optionally followed by ASK/ARK (those are only
    candidates; the chain must end at a root in `trust`, default the pinned AMD roots).
    `crls`: AMD CRLs to check the chain against (see `check_amd_crls`); None: no CRL check.
    """
    at = utc(at)
    trust = trust or roots.amd()
    if report.signature_algo != 1:
        raise SignatureError("unsupported signature algorithm", field="SIGNATURE_ALGO",
                             got=report.signature_algo, expected="1 (ECDSA P-384 with SHA-384)")
    if report.signing_key not in ("VCEK", "VLEK"):
        raise SignatureError("report is not signed by a VCEK or VLEK", field="FLAGS.SIGNING_KEY",
                             got=report.signing_key, expected="VCEK or VLEK")
    if not certs:
        raise EvidenceVerificationError(
            f"the {report.signing_key} certificate is required to verify a SEV-SNP report",
            field="certs", expected=f"{report.signing_key} certificate (DER or PEM)")
    cert_list = certs if isinstance(certs, list) else load_certificates(certs, "SEV-SNP certificates")
    leaf = cert_list[0]
    chain = build_chain(leaf, [*cert_list[1:], *trust.intermediates], trust.roots, at, role=report.signing_key)
    notes = []
    if crls is not None:
        notes.append(check_amd_crls(chain, list(crls), at))
    _check_signature(report, leaf)
    endorsement = read_endorsement(leaf)
    turin = endorsement.turin
    if report.cpuid_fam_id is not None and (report.cpuid_fam_id == 0x1A) != turin:
        raise EndorsementMismatchError(
            "report CPU family does not match the endorsement certificate's product",
            field="CPUID_FAM_ID", got=f"{report.cpuid_fam_id:#x}", expected=endorsement.product)
    reported = report.tcb("reported", turin)
    _check_tcb(reported, endorsement)
    if report.signing_key == "VCEK":
        notes.extend(_check_chip_id(report, endorsement))
    if crls is None:
        notes.append(f"{REVOCATION_NOT_CHECKED}: no AMD CRL was given (collateral)")
    return Verified("snp", report, _claims(report, endorsement), at, tuple(chain.subjects()), notes=tuple(notes),
                    revocation_checked=crls is not None)


def _check_signature(report: SnpReport, leaf: x509.Certificate) -> None:
    """The report's ECDSA P-384 signature (zero padding) under the endorsement certificate's key."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SignatureError("endorsement key is not an ECDSA P-384 key", field=f"{report.signing_key} key",
                             got=type(key).__name__)
    if any(report.signature_reserved) or any(report.signature_r[48:]) or any(report.signature_s[48:]):
        raise SignatureError("signature padding is not zero", field="SIGNATURE")
    from .certs import ecdsa_verify

    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    if not ecdsa_verify(key, r, s, report.signed_bytes, hashes.SHA384()):
        raise SignatureError(
            "report signature does not verify with the endorsement key",
            field="SIGNATURE", got=f"signer {name(leaf)}", expected="ECDSA P-384 over bytes 0x000-0x29F")


def _check_chip_id(report: SnpReport, endorsement: AmdEndorsement) -> list[str]:
    """A VCEK names the chip: its hardware ID must be the report's CHIP_ID (notes when CHIP_ID is masked)."""
    if endorsement.hwid is None:
        raise EndorsementMismatchError("VCEK lacks the hardware ID extension", field=f"VCEK hwID ({OID_HWID})")
    if not any(report.chip_id) or report.mask_chip_key:
        return ["CHIP_ID masked: hardware ID not compared"]
    if report.chip_id[: len(endorsement.hwid)] != endorsement.hwid:
        raise EndorsementMismatchError("CHIP_ID does not match the VCEK hardware ID", field="CHIP_ID",
                                       got=report.chip_id, expected=endorsement.hwid)
    return []


def _claims(report: SnpReport, endorsement: AmdEndorsement) -> dict[str, Any]:
    turin = endorsement.turin
    return {
        "report_data": report.report_data,
        "debug": report.debug,
        "measurement": report.measurement,
        "host_data": report.host_data,
        "vmpl": report.vmpl,
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "version": report.version,
        "product": endorsement.product,
        "signing_key": report.signing_key,
        "reported_tcb": report.tcb("reported", turin).as_dict(),
        "current_tcb": report.tcb("current", turin).as_dict(),
        "committed_tcb": report.tcb("committed", turin).as_dict(),
        "launch_tcb": report.tcb("launch", turin).as_dict(),
        "chip_id": report.chip_id,
        "id_key_digest": report.id_key_digest,
        "author_key_digest": report.author_key_digest,
    }


def _check_tcb(reported: TcbVersion, e: AmdEndorsement) -> None:
    pairs = [("bootloader", reported.bootloader, e.bootloader), ("tee", reported.tee, e.tee),
             ("snp", reported.snp, e.snp), ("microcode", reported.microcode, e.microcode)]
    if e.turin:
        pairs.append(("fmc", reported.fmc, e.fmc))
    for label, got, want in pairs:
        if got != want:
            raise EndorsementMismatchError(
                "REPORTED_TCB does not equal the endorsement certificate's TCB",
                field=f"REPORTED_TCB.{label}", got=got, expected=want)


def check_amd_crls(chain: Chain, crls: list[x509.CertificateRevocationList], at: dt.datetime) -> str:
    """Each CRL is issued by a certificate of `chain`, signed by it and current at `at`; no
    certificate of the chain issued by that CA is revoked. Raises RevokedError / CollateralError."""
    if not crls:
        raise CollateralError("AMD CRL collateral was given but holds no CRL", field="collateral",
                              expected="at least one CRL (DER or PEM)")
    certs = list(chain.certificates)
    for crl in crls:
        issuer = next((c for c in certs if c.subject == crl.issuer), None)
        if issuer is None:
            raise CollateralError("CRL is not issued by any certificate of the endorsement chain",
                                  field="AMD CRL issuer", got=crl.issuer.rfc4514_string(),
                                  expected=[name(c) for c in certs])
        verify_crl(crl, issuer, at, f"AMD {name(issuer)}")
        for cert in certs:
            if cert.issuer == crl.issuer and cert.subject != cert.issuer:
                check_not_revoked(cert, crl, "AMD " + ("endorsement" if cert is certs[0] else "intermediate"))
    return f"{len(crls)} AMD CRL(s) checked: no certificate of the chain is revoked"


def load_amd_crls(collateral: Any) -> list[x509.CertificateRevocationList] | None:
    """AMD CRLs from SEV-SNP collateral: None (no check), a CRL file, a folder (every `*.crl`,
    `*crl.der`, `*crl.pem` in it), bytes, or a list of those or of CRL objects. A folder without
    any CRL is a CollateralError (collateral was asked for, so it must be checked)."""
    if collateral is None:
        return None
    items = collateral if isinstance(collateral, list | tuple) else [collateral]
    out: list[x509.CertificateRevocationList] = []
    for item in items:
        if isinstance(item, x509.CertificateRevocationList):
            out.append(item)
        elif isinstance(item, bytes | bytearray):
            out.append(load_crl(bytes(item), "AMD CRL"))
        elif isinstance(item, str | Path):
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and (
                    p.suffix == ".crl" or p.name.endswith(("crl.der", "crl.pem"))) and not p.name.startswith(
                    ("pck_", "root_ca_")))
                if not files:
                    raise CollateralError("SEV-SNP collateral folder holds no AMD CRL", field="collateral",
                                          got=str(path), expected="*.crl (DER or PEM, from AMD KDS)")
                out.extend(load_crl(p.read_bytes(), f"AMD CRL {p.name}") for p in files)
            else:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise CollateralError(f"cannot read AMD CRL: {exc}", field="collateral", got=str(path)) from exc
                out.append(load_crl(data, f"AMD CRL {path.name}"))
        else:
            raise CollateralError("unsupported SEV-SNP collateral", field="collateral", got=type(item).__name__,
                                  expected="CRL path, folder, bytes or CRL objects")
    return out
