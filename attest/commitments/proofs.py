"""Sigma protocols over Pedersen commitments, non-interactive by Fiat–Shamir.

- Opening proof (Okamoto): knowledge of (m, r) with C = m·G + r·H. Prover: T = a·G + b·H,
  c = FS(...), s_m = a + c·m, s_r = b + c·r. Verifier: s_m·G + s_r·H == T + c·C.
- Equality proof (Schnorr on base H): C1 and C2 hide the same m, shown as knowledge of
  d = r1 − r2 with C1 − C2 = d·H. Prover: T = k·H, s = k + c·d. Verifier: s·H == T + c·(C1 − C2).
  Sound because C1 − C2 = d·H with m1 ≠ m2 would give log_G(H).

The challenge hashes the whole statement as RFC 8235 §2.2 asks: the protocol name, the suite,
G, H, every statement point, the prover's commitment T and the caller's context, each
length-prefixed, then RFC 9380 hash_to_field into F_r. A proof made under one context or for one
statement does not verify under another. For receipts the context is `response_context`: the
transcript binding digest, the node's public key and the receipt id (version 2; version 1 bound
the binding digest only, so one node's proof could be replayed under another node's key or
receipt). An equality proof between a commitment and itself (C1 == C2) proves nothing and is
refused by both prover and verifier.

Nonces are hedged: derived from the witness, the statement and 32 fresh CSPRNG bytes, so a
weak RNG alone does not leak the witness and a repeated RNG output does not either.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ...canonical import lp
from ...errors import UsageError, VerificationError
from .group import (
    G1Point,
    IdentityPointError,
    R,
    check_scalar,
    encode_scalar,
    generator_g,
    generator_h,
    hash_to_scalar,
)

SUITE = "specguard-pedersen-bls12381g1-sha256"
#: 2: the equality-proof context binds node key and receipt id, and C1 == C2 is refused
VERSION = 2
FS_DOMAIN = b"specguard/commitments/fiat-shamir/v2"
RESPONSE_CONTEXT_TAG = b"specguard/commitments/response-context/v2"
DST_CHALLENGE = b"SPECGUARD-V1-FS-CHALLENGE_XMD:SHA-256"
DST_NONCE = b"SPECGUARD-V1-HEDGED-NONCE_XMD:SHA-256"
PROTO_OPENING = "pedersen-opening-pok"
PROTO_EQUALITY = "pedersen-equality"


class ProofError(VerificationError):
    """A commitment proof does not verify (equation, context or statement mismatch)."""


class ProofTranscript:
    """Fiat–Shamir transcript: labelled, length-prefixed fields hashed into one challenge."""

    def __init__(self, protocol: str) -> None:
        self._fields: list[bytes] = [FS_DOMAIN, protocol.encode("utf-8"), SUITE.encode("utf-8")]

    def append(self, label: str, data: bytes) -> ProofTranscript:
        self._fields += [label.encode("utf-8"), bytes(data)]
        return self

    def append_point(self, label: str, point: G1Point) -> ProofTranscript:
        return self.append(label, point.to_bytes())

    def encoded(self) -> bytes:
        return lp(*self._fields)

    def challenge(self) -> int:
        """c = hash_to_field(lp(fields), DST_CHALLENGE) in F_r."""
        return hash_to_scalar(self.encoded(), DST_CHALLENGE)


def _context_bytes(context: bytes | str) -> bytes:
    if isinstance(context, str):
        return context.encode("utf-8")
    if isinstance(context, bytes | bytearray):
        return bytes(context)
    raise UsageError("proof context must be bytes or str", field="context", got=type(context).__name__)


def response_context(binding_digest: str, node_public_key: bytes, receipt_id: str) -> bytes:
    """The Fiat–Shamir context of a receipt's equality proof (version 2).

    lp(RESPONSE_CONTEXT_TAG, binding digest UTF-8, the node's 32-byte Ed25519 public key, receipt id
    UTF-8): a proof made for one node key or receipt does not verify for another."""
    if not isinstance(binding_digest, str) or not binding_digest:
        raise UsageError("binding digest must be a non-empty string", field="binding_digest", got=binding_digest)
    if not isinstance(node_public_key, bytes | bytearray) or len(node_public_key) != 32:
        raise UsageError("node public key must be 32 bytes (Ed25519)", field="node_public_key",
                         got=type(node_public_key).__name__ if not isinstance(node_public_key, bytes | bytearray)
                         else f"{len(node_public_key)} bytes", expected="32 bytes")
    if not isinstance(receipt_id, str) or len(receipt_id) != 32 or any(ch not in "0123456789abcdef" for ch in receipt_id):
        raise UsageError("receipt id must be 32 lowercase hex digits", field="receipt_id", got=receipt_id)
    return lp(RESPONSE_CONTEXT_TAG, binding_digest.encode("utf-8"), bytes(node_public_key), receipt_id.encode("utf-8"))


def _hedged_nonce(label: bytes, *parts: bytes) -> int:
    while True:
        k = hash_to_scalar(lp(label, *parts, secrets.token_bytes(32)), DST_NONCE)
        if k:
            return k


def _require_statement_point(point: G1Point, field: str) -> None:
    if not isinstance(point, G1Point):
        raise UsageError("expected a G1Point", field=field, got=type(point).__name__)
    if point.is_identity:
        raise IdentityPointError("statement point is the identity", field=field)


# --- opening proof ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpeningProof:
    """Proof of knowledge of (m, r) with C = m·G + r·H."""

    t: G1Point
    s_m: int
    s_r: int


def _opening_challenge(c: G1Point, t: G1Point, context: bytes) -> int:
    tr = ProofTranscript(PROTO_OPENING)
    tr.append_point("G", generator_g()).append_point("H", generator_h())
    tr.append_point("C", c).append_point("T", t).append("context", context)
    return tr.challenge()


def prove_opening(c: G1Point, m: int, r: int, context: bytes | str) -> OpeningProof:
    """Prove knowledge of the opening (m, r) of C, bound to `context`."""
    _require_statement_point(c, "commitment")
    check_scalar(m, "message")
    check_scalar(r, "blinding")
    ctx = _context_bytes(context)
    g, h = generator_g(), generator_h()
    if g.mul(m) + h.mul(r) != c:
        raise UsageError("refusing to prove: (m, r) does not open C", field="commitment")
    witness = lp(encode_scalar(m), encode_scalar(r), c.to_bytes(), ctx)
    a = _hedged_nonce(b"opening/a", witness)
    b = _hedged_nonce(b"opening/b", witness)
    t = g.mul(a) + h.mul(b)
    ch = _opening_challenge(c, t, ctx)
    return OpeningProof(t=t, s_m=(a + ch * m) % R, s_r=(b + ch * r) % R)


def verify_opening_proof(c: G1Point, proof: OpeningProof, context: bytes | str) -> None:
    """Raise ProofError unless `proof` shows knowledge of an opening of C under `context`."""
    _require_statement_point(c, "commitment")
    _require_statement_point(proof.t, "proof.t")
    check_scalar(proof.s_m, "proof.s_m")
    check_scalar(proof.s_r, "proof.s_r")
    ch = _opening_challenge(c, proof.t, _context_bytes(context))
    lhs = generator_g().mul(proof.s_m) + generator_h().mul(proof.s_r)
    rhs = proof.t + c.mul(ch)
    if lhs != rhs:
        raise ProofError("opening proof does not verify: s_m·G + s_r·H != T + c·C", field="proof",
                         got=lhs.hex(), expected=rhs.hex())


# --- equality proof --------------------------------------------------------------------------


@dataclass(frozen=True)
class EqualityProof:
    """Proof that two commitments hide the same message: knowledge of d with C1 − C2 = d·H."""

    t: G1Point
    s: int


def _equality_challenge(c1: G1Point, c2: G1Point, t: G1Point, context: bytes) -> int:
    tr = ProofTranscript(PROTO_EQUALITY)
    tr.append_point("G", generator_g()).append_point("H", generator_h())
    tr.append_point("C1", c1).append_point("C2", c2).append_point("T", t).append("context", context)
    return tr.challenge()


def prove_equality(c1: G1Point, r1: int, c2: G1Point, r2: int, context: bytes | str) -> EqualityProof:
    """Prove C1 and C2 commit to the same message, given their blindings r1, r2."""
    _require_statement_point(c1, "c1")
    _require_statement_point(c2, "c2")
    check_scalar(r1, "r1")
    check_scalar(r2, "r2")
    if c1 == c2:
        raise UsageError("refusing to prove: C1 and C2 are the same commitment (a fresh commitment is needed)",
                         field="c1")
    ctx = _context_bytes(context)
    h = generator_h()
    d = (r1 - r2) % R
    if c1 - c2 != h.mul(d):
        raise UsageError("refusing to prove: C1 and C2 do not hide the same message", field="c1")
    k = _hedged_nonce(b"equality/k", encode_scalar(d), c1.to_bytes(), c2.to_bytes(), ctx)
    t = h.mul(k)
    ch = _equality_challenge(c1, c2, t, ctx)
    return EqualityProof(t=t, s=(k + ch * d) % R)


def verify_equality(c1: G1Point, c2: G1Point, proof: EqualityProof, context: bytes | str) -> None:
    """Raise ProofError unless `proof` shows C1 and C2 hide the same message, under `context`."""
    _require_statement_point(c1, "c1")
    _require_statement_point(c2, "c2")
    _require_statement_point(proof.t, "proof.t")
    check_scalar(proof.s, "proof.s")
    if c1 == c2:  # C1 − C2 = 0: any (T = s·H, s) "verifies", so the proof would show nothing
        raise ProofError("equality proof between a commitment and itself proves nothing", field="c1",
                         got=c1.hex(), expected="a fresh commitment different from the published one")
    ch = _equality_challenge(c1, c2, proof.t, _context_bytes(context))
    lhs = generator_h().mul(proof.s)
    rhs = proof.t + (c1 - c2).mul(ch)
    if lhs != rhs:
        raise ProofError("equality proof does not verify: s·H != T + c·(C1 − C2)", field="equality_proof",
                         got=lhs.hex(), expected=rhs.hex())

