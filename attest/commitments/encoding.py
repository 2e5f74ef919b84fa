"""JSON forms of commitments and proofs, each with a version and a suite name.

Points are 96 lowercase hex characters (48-byte compressed G1), scalars 64 lowercase hex
characters (32-byte big-endian, < r). Parsers accept exactly the documented keys and raise
`ProofFormatError` (a ParseError) or the group's point/scalar errors on anything else; decoded
points have passed the on-curve, subgroup and non-identity checks.

    {"version": 1, "suite": SUITE, "type": "pedersen-opening-pok", "t": P, "s_m": S, "s_r": S}
    {"version": 1, "suite": SUITE, "type": "pedersen-equality",    "t": P, "s": S}
    {"version": 1, "suite": SUITE, "type": "pedersen-commitment",  "commitment": P}
"""

from __future__ import annotations

from typing import Any

from .group import CommitmentParseError, G1Point, decode_point_hex, decode_scalar_hex, encode_scalar
from .proofs import PROTO_EQUALITY, PROTO_OPENING, SUITE, VERSION, EqualityProof, OpeningProof

TYPE_COMMITMENT = "pedersen-commitment"


class ProofFormatError(CommitmentParseError):
    """A proof or commitment document does not have the documented JSON shape."""


def scalar_hex(k: int) -> str:
    return encode_scalar(k).hex()


def check_header(doc: Any, kind: str, keys: set[str], field: str) -> dict[str, Any]:
    """Check the object shape, version, suite and type; return it."""
    if not isinstance(doc, dict):
        raise ProofFormatError("expected a JSON object", field=field, got=type(doc).__name__)
    want = keys | {"version", "suite", "type"}
    if set(doc) != want:
        raise ProofFormatError("unexpected or missing keys", field=field, got=sorted(map(str, doc)),
                               expected=sorted(want))
    version = doc["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        raise ProofFormatError("unsupported version", field=f"{field}.version", got=version, expected=VERSION)
    if doc["suite"] != SUITE:
        raise ProofFormatError("unsupported suite", field=f"{field}.suite", got=doc["suite"], expected=SUITE)
    if doc["type"] != kind:
        raise ProofFormatError("wrong document type", field=f"{field}.type", got=doc["type"], expected=kind)
    return doc


def opening_proof_to_json(proof: OpeningProof) -> dict[str, Any]:
    return {"version": VERSION, "suite": SUITE, "type": PROTO_OPENING, "t": proof.t.hex(),
            "s_m": scalar_hex(proof.s_m), "s_r": scalar_hex(proof.s_r)}


def opening_proof_from_json(doc: Any, field: str = "opening_proof") -> OpeningProof:
    d = check_header(doc, PROTO_OPENING, {"t", "s_m", "s_r"}, field)
    return OpeningProof(t=decode_point_hex(d["t"], f"{field}.t"),
                        s_m=decode_scalar_hex(d["s_m"], f"{field}.s_m"),
                        s_r=decode_scalar_hex(d["s_r"], f"{field}.s_r"))


def equality_proof_to_json(proof: EqualityProof) -> dict[str, Any]:
    return {"version": VERSION, "suite": SUITE, "type": PROTO_EQUALITY, "t": proof.t.hex(),
            "s": scalar_hex(proof.s)}


def equality_proof_from_json(doc: Any, field: str = "equality_proof") -> EqualityProof:
    d = check_header(doc, PROTO_EQUALITY, {"t", "s"}, field)
    return EqualityProof(t=decode_point_hex(d["t"], f"{field}.t"), s=decode_scalar_hex(d["s"], f"{field}.s"))


def commitment_to_json(c: G1Point) -> dict[str, Any]:
    return {"version": VERSION, "suite": SUITE, "type": TYPE_COMMITMENT, "commitment": c.hex()}


def commitment_from_json(doc: Any, field: str = "commitment") -> G1Point:
    d = check_header(doc, TYPE_COMMITMENT, {"commitment"}, field)
    return decode_point_hex(d["commitment"], f"{field}.commitment")
