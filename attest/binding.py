"""Binding a node's receipt-signing key to TEE evidence through REPORT_DATA.

    report_data = SHA-512( lp(b"specguard/attestation/report-data/v1") || lp(public_key) || lp(nonce) )

where lp(x) is x's length as an 8-byte big-endian integer followed by x (specguard.canonical.lp),
`public_key` is the node's raw 32-byte Ed25519 public key and `nonce` the verifier-chosen
nonce (16..64 bytes). The 64-byte digest fills SEV-SNP and TDX REPORT_DATA exactly.

GPU evidence never binds the key itself (its requester picks the SPDM nonce, and the GPU says
nothing about the software holding the key). It counts only next to CPU evidence that does, and
its 32-byte SPDM nonce must be derived from that CPU evidence:

    gpu_nonce = SHA-256( lp(b"specguard/attestation/gpu-nonce/v1") || lp(SHA-256(cpu_evidence)) || lp(public_key) )

where `cpu_evidence` is the exact CPU report / quote bytes of the node evidence document.
"""

from __future__ import annotations

import hashlib

from specguard.canonical import lp, tagged_hash
from specguard.errors import UsageError

BINDING_TAG = "specguard/attestation/report-data/v1"
SEAL_NONCE_TAG = "specguard/attestation/seal-nonce/v1"
GPU_NONCE_TAG = "specguard/attestation/gpu-nonce/v1"
REPORT_DATA_SIZE = 64
GPU_NONCE_SIZE = 32
MIN_NONCE = 16
MAX_NONCE = 64
PUBLIC_KEY_SIZE = 32


def check_nonce(nonce: bytes) -> bytes:
    """`nonce` if it is 16..64 bytes, else a UsageError."""
    if not isinstance(nonce, bytes) or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise UsageError("nonce must be 16..64 bytes", field="nonce",
                         got=len(nonce) if isinstance(nonce, bytes) else type(nonce).__name__,
                         expected=f"{MIN_NONCE}..{MAX_NONCE} bytes")
    return nonce


def parse_nonce_hex(text: str) -> bytes:
    """A nonce given as hex text (16..64 bytes)."""
    try:
        nonce = bytes.fromhex(text)
    except (ValueError, TypeError) as exc:
        raise UsageError("nonce must be hex", field="nonce", got=str(text)[:80]) from exc
    return check_nonce(nonce)


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """The 64 REPORT_DATA bytes that bind `public_key` (32-byte Ed25519) to `nonce`."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise UsageError("public key must be 32 raw Ed25519 bytes", field="public_key",
                         got=len(public_key) if isinstance(public_key, bytes) else type(public_key).__name__)
    check_nonce(nonce)
    return tagged_hash(BINDING_TAG, public_key, nonce, algorithm="sha512")


def binding_preimage(public_key: bytes, nonce: bytes) -> bytes:
    """The exact bytes hashed by `report_data_for` (for documentation and independent checks)."""
    return lp(BINDING_TAG.encode("utf-8"), public_key, nonce)


def seal_nonce(public_key: bytes) -> bytes:
    """The fixed 32-byte nonce a node uses for the evidence its receipts reference."""
    return hashlib.sha256(lp(SEAL_NONCE_TAG.encode("utf-8"), public_key)).digest()


def gpu_nonce_for(cpu_evidence: bytes, public_key: bytes) -> bytes:
    """The 32-byte SPDM nonce GPU evidence must carry to count next to `cpu_evidence` (the CPU
    report or quote bytes that bind `public_key`): fresh after the CPU evidence, tied to the key."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise UsageError("public key must be 32 raw Ed25519 bytes", field="public_key",
                         got=len(public_key) if isinstance(public_key, bytes) else type(public_key).__name__)
    if not isinstance(cpu_evidence, bytes) or not cpu_evidence:
        raise UsageError("CPU evidence bytes are required to derive the GPU nonce", field="cpu_evidence")
    return tagged_hash(GPU_NONCE_TAG, hashlib.sha256(cpu_evidence).digest(), public_key, algorithm="sha256")
