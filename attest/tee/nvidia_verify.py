"""Verify NVIDIA GPU evidence: device certificate chain (leaf first) to the pinned NVIDIA
Device Identity CA, the leaf's FWID (last 48 bytes of TCG DICE extension 2.23.133.5.4.1)
against the FWID in the opaque data (evidence without one fails), and the SPDM signature with the leaf key.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import roots
from .certs import build_chain, ecdsa_verify, load_certificates, name, utc
from .errors import CertificateChainError, EndorsementMismatchError, EvidenceVerificationError, SignatureError
from .nvidia import SIGNATURE_SIZE, NvidiaEvidence
from .types import Verified

FWID_OID = "2.23.133.5.4.1"


def leaf_fwid(cert: x509.Certificate) -> bytes:
    """The FWID a GPU's attestation certificate carries (last 48 bytes of its DICE TcbInfo)."""
    for ext in cert.extensions:
        if ext.oid.dotted_string == FWID_OID:
            value = bytes(getattr(ext.value, "value", b""))
            if len(value) < 48:
                raise EndorsementMismatchError("FWID extension is too short", field=FWID_OID, got=len(value))
            return value[-48:]
    raise EndorsementMismatchError("the signing certificate has no FWID extension",
                                   field=f"leaf {name(cert)} {FWID_OID}", expected="TCG DICE TcbInfo with FWID")


def verify_nvidia(
    ev: NvidiaEvidence,
    *,
    at: dt.datetime | None = None,
    trust: roots.TrustStore | None = None,
    certs: bytes | list[x509.Certificate] | None = None,
) -> Verified:
    """Verify `ev` with its certificate chain (PEM, leaf first) at time `at`."""
    at = utc(at)
    trust = trust or roots.nvidia()
    if not certs:
        raise EvidenceVerificationError("the GPU certificate chain is required", field="certs",
                                        expected="PEM chain, attestation certificate first")
    chain_certs = certs if isinstance(certs, list) else load_certificates(certs, "NVIDIA certificate chain")
    if len(chain_certs) < 2:
        raise CertificateChainError("certificate chain must hold at least the signing certificate and the root",
                                    field="certs", got=len(chain_certs), expected=">= 2")
    leaf = chain_certs[0]
    chain = build_chain(leaf, [*chain_certs[1:], *trust.intermediates], trust.roots, at, role="GPU attestation")
    cert_fwid = leaf_fwid(leaf)
    report_fwid = ev.opaque_field("fwid")
    if report_fwid is None:
        raise EndorsementMismatchError("GPU evidence carries no FWID: it cannot be tied to the signing certificate",
                                       field="opaque.fwid", got=None, expected=cert_fwid)
    if report_fwid != cert_fwid:
        raise EndorsementMismatchError("FWID in the evidence does not match the signing certificate",
                                       field="opaque.fwid", got=report_fwid, expected=cert_fwid)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SignatureError("GPU attestation key is not ECDSA P-384", field="leaf key")
    r = int.from_bytes(ev.signature[: SIGNATURE_SIZE // 2], "big")
    s = int.from_bytes(ev.signature[SIGNATURE_SIZE // 2 :], "big")
    if not ecdsa_verify(key, r, s, ev.signed_bytes, hashes.SHA384()):
        raise SignatureError("SPDM measurement signature does not verify", field="response.Signature",
                             got=f"signer {name(leaf)}", expected="ECDSA P-384 / SHA-384 over request || response")
    claims = {
        # The 32-byte requester nonce: GPU evidence binds nothing alone; next to CPU evidence it must be
        # specguard.attest.binding.gpu_nonce_for(cpu evidence, node key).
        "report_data": ev.request_nonce,
        "debug": False,
        "driver_version": ev.driver_version,
        "vbios_version": ev.vbios_version,
        "measurements": {b.index: b.value for b in ev.blocks},
        "fwid": cert_fwid,
    }
    return Verified("nvidia", ev, claims, at, tuple(chain.subjects()))
