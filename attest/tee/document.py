"""Node evidence documents: what `GET /specguard/v1/attestation` returns, what receipts
reference by digest, and what `specguard verify --attestation-evidence FILE` reads.

    {"type": "snp" | "tdx" | "nvidia" | "simulated" | <plugin type>,
     "evidence": base64(report bytes),
     "certs": base64(PEM or DER certificates) or null,
     "nonce": hex, "public_key": hex (32-byte Ed25519), "collected_at": RFC 3339 UTC,
     "simulated": bool}

Its digest is `json_digest` (SHA-256 of the RFC 8785 canonical JSON) of exactly this object.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specguard.canonical import json_digest

from ..binding import check_nonce
from .certs import utc
from .errors import EvidenceParseError, EvidenceVerificationError
from .types import Verified

KEYS = {"type", "evidence", "certs", "nonce", "public_key", "collected_at", "simulated"}


def rfc3339(value: dt.datetime) -> str:
    return utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: str, field: str = "time") -> dt.datetime:
    """An RFC 3339 / ISO 8601 time (naive means UTC)."""
    try:
        return utc(dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00")))
    except ValueError as exc:
        raise EvidenceParseError(f"{field} is not an RFC 3339 time", field=field, got=str(text)[:60]) from exc


@dataclass(frozen=True)
class EvidenceDocument:
    type: str
    evidence: bytes
    certs: bytes | None
    nonce: bytes
    public_key: bytes
    collected_at: dt.datetime
    simulated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "evidence": base64.b64encode(self.evidence).decode("ascii"),
            "certs": None if self.certs is None else base64.b64encode(self.certs).decode("ascii"),
            "nonce": self.nonce.hex(),
            "public_key": self.public_key.hex(),
            "collected_at": rfc3339(self.collected_at),
            "simulated": self.simulated,
        }

    def digest(self) -> str:
        """`sha256:<hex>` of the canonical JSON document (what receipts carry)."""
        return json_digest(self.to_json())


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceParseError(f"evidence document {field} must be a base64 string", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError(f"evidence document {field} is not base64", field=field) from exc


def _hex(value: Any, field: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError) as exc:
        raise EvidenceParseError(f"evidence document {field} must be hex", field=field) from exc


def document_from_json(doc: Any) -> EvidenceDocument:
    """Validate the shape of a decoded evidence document."""
    if not isinstance(doc, dict):
        raise EvidenceParseError("evidence document must be a JSON object", field="document")
    missing = sorted(KEYS - {"certs"} - set(doc))
    if missing:
        raise EvidenceParseError("evidence document lacks fields", field="document", got=missing)
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise EvidenceParseError("evidence document has unknown fields", field="document", got=unknown)
    kind = doc["type"]
    if not isinstance(kind, str) or not kind:
        raise EvidenceParseError("evidence document type must be a string", field="type")
    certs_raw = doc.get("certs")
    certs = None
    if certs_raw is not None:
        certs = certs_raw.encode("ascii", "replace") if isinstance(certs_raw, str) and "-----BEGIN" in certs_raw \
            else _b64(certs_raw, "certs")
    simulated = doc["simulated"]
    if not isinstance(simulated, bool) or simulated != (kind == "simulated"):
        raise EvidenceParseError("evidence document 'simulated' must be true exactly for type 'simulated'",
                                 field="simulated", got=simulated, expected=kind == "simulated")
    nonce = _hex(doc["nonce"], "nonce")
    try:
        check_nonce(nonce)
    except Exception as exc:
        raise EvidenceParseError("evidence document nonce must be 16..64 bytes", field="nonce",
                                 got=len(nonce)) from exc
    public_key = _hex(doc["public_key"], "public_key")
    if len(public_key) != 32:
        raise EvidenceParseError("evidence document public_key must be 32 bytes", field="public_key",
                                 got=len(public_key))
    return EvidenceDocument(kind, _b64(doc["evidence"], "evidence"), certs, nonce, public_key,
                            parse_time(doc["collected_at"], "collected_at"), simulated)


def load_document(source: Any) -> EvidenceDocument:
    """An evidence document from a path, JSON text/bytes, a dict, or an EvidenceDocument."""
    if isinstance(source, EvidenceDocument):
        return source
    if isinstance(source, dict):
        return document_from_json(source)
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        try:
            source = Path(source).read_bytes()
        except OSError as exc:
            raise EvidenceParseError(f"cannot read evidence document: {exc}", field="path") from exc
    try:
        text = source.decode("utf-8") if isinstance(source, bytes | bytearray) else str(source)
        return document_from_json(json.loads(text))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, EvidenceParseError):
            raise
        raise EvidenceParseError(f"evidence document is not JSON: {exc}", field="document") from exc


def verify_document(
    document: Any,
    policy: Any,
    *,
    at: dt.datetime | None = None,
    now: dt.datetime | None = None,
    trust: Any = None,
    collateral: Any = None,
    expected_public_key: bytes | None = None,
    types: Any = None,
) -> Verified:
    """Parse, verify and validate a node evidence document, including the key binding.

    `types`: the evidence types to look the document's type up in (a name index or a list, e.g.
    the registered ones); None means the built-in types.
    """
    from .registry import get_evidence_type

    doc = load_document(document)
    if expected_public_key is not None and doc.public_key != expected_public_key:
        raise EvidenceVerificationError("evidence is bound to a different node key", field="public_key",
                                        got=doc.public_key, expected=expected_public_key)
    et = get_evidence_type(doc.type, types)
    parsed = et.parse(doc.evidence)
    verified = et.verify(parsed, at=at, trust=trust, certs=doc.certs, collateral=collateral)
    from .validate import section_of

    et.validate(verified, section_of(policy), public_key=doc.public_key, nonce=doc.nonce, now=now,
                collected_at=doc.collected_at)
    return verified
