"""Node evidence documents: what `GET /specguard/v1/attestation` returns, what receipts
reference by digest, and what `specguard verify --attestation-evidence FILE` reads.

    {"type": "snp" | "tdx" | "nvidia" | "simulated" | <plugin type>,
     "evidence": base64(report bytes),
     "certs": base64(PEM or DER certificates) or null,
     "nonce": hex, "public_key": hex (32-byte Ed25519), "collected_at": RFC 3339 UTC,
     "simulated": bool,
     "gpus": [{"type": "nvidia", "evidence": base64, "certs": base64 or PEM}]}   # optional

Its digest is `json_digest` (SHA-256 of the RFC 8785 canonical JSON) of exactly this object;
`gpus` is written only when present, so documents without GPU evidence keep their bytes and digest.

Node attestation needs CPU TEE evidence (`type` snp, tdx, or a plugin's CPU type) that binds
`public_key`. GPU evidence never attests a node key alone: a document whose `type` is a GPU type
is rejected (`KeyBindingError`), and each `gpus` entry counts only if its SPDM nonce equals
`binding.gpu_nonce_for(evidence, public_key)` (derived from the CPU evidence next to it).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from specguard.canonical import json_digest

from ..binding import check_nonce, gpu_nonce_for
from .certs import utc
from .errors import EvidenceParseError, KeyBindingError
from .types import Verified

KEYS = {"type", "evidence", "certs", "nonce", "public_key", "collected_at", "simulated", "gpus"}
GPU_KEYS = {"type", "evidence", "certs"}
MAX_GPUS = 16


def rfc3339(value: dt.datetime) -> str:
    return utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: str, field: str = "time") -> dt.datetime:
    """An RFC 3339 / ISO 8601 time (naive means UTC)."""
    try:
        return utc(dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00")))
    except ValueError as exc:
        raise EvidenceParseError(f"{field} is not an RFC 3339 time", field=field, got=str(text)[:60]) from exc


@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's evidence inside a node evidence document (its nonce derived from the CPU evidence)."""

    type: str
    evidence: bytes
    certs: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "evidence": base64.b64encode(self.evidence).decode("ascii"),
                "certs": None if self.certs is None else base64.b64encode(self.certs).decode("ascii")}


@dataclass(frozen=True)
class EvidenceDocument:
    type: str
    evidence: bytes
    certs: bytes | None
    nonce: bytes
    public_key: bytes
    collected_at: dt.datetime
    simulated: bool
    gpus: tuple[GpuEvidence, ...] = ()

    def gpu_nonce(self) -> bytes:
        """The SPDM nonce each GPU's evidence must carry next to this document's CPU evidence."""
        return gpu_nonce_for(self.evidence, self.public_key)

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": self.type,
            "evidence": base64.b64encode(self.evidence).decode("ascii"),
            "certs": None if self.certs is None else base64.b64encode(self.certs).decode("ascii"),
            "nonce": self.nonce.hex(),
            "public_key": self.public_key.hex(),
            "collected_at": rfc3339(self.collected_at),
            "simulated": self.simulated,
        }
        if self.gpus:
            out["gpus"] = [g.to_json() for g in self.gpus]
        return out

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


def _certs_field(raw: Any, field: str) -> bytes | None:
    if raw is None:
        return None
    if isinstance(raw, str) and "-----BEGIN" in raw:
        return raw.encode("ascii", "replace")
    return _b64(raw, field)


def _gpus(raw: Any) -> tuple[GpuEvidence, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_GPUS:
        raise EvidenceParseError("evidence document gpus must be a non-empty list", field="gpus",
                                 got=type(raw).__name__ if not isinstance(raw, list) else len(raw),
                                 expected=f"1..{MAX_GPUS} GPU evidence objects")
    out = []
    for i, item in enumerate(raw):
        where = f"gpus[{i}]"
        if not isinstance(item, dict) or not {"type", "evidence"} <= set(item) or set(item) - GPU_KEYS:
            raise EvidenceParseError("GPU evidence must be {type, evidence, certs}", field=where,
                                     got=sorted(item) if isinstance(item, dict) else type(item).__name__)
        if not isinstance(item["type"], str) or not item["type"]:
            raise EvidenceParseError("GPU evidence type must be a string", field=f"{where}.type")
        out.append(GpuEvidence(item["type"], _b64(item["evidence"], f"{where}.evidence"),
                               _certs_field(item.get("certs"), f"{where}.certs")))
    return tuple(out)


def document_from_json(doc: Any) -> EvidenceDocument:
    """Validate the shape of a decoded evidence document."""
    if not isinstance(doc, dict):
        raise EvidenceParseError("evidence document must be a JSON object", field="document")
    missing = sorted(KEYS - {"certs", "gpus"} - set(doc))
    if missing:
        raise EvidenceParseError("evidence document lacks fields", field="document", got=missing)
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise EvidenceParseError("evidence document has unknown fields", field="document", got=unknown)
    kind = doc["type"]
    if not isinstance(kind, str) or not kind:
        raise EvidenceParseError("evidence document type must be a string", field="type")
    certs = _certs_field(doc.get("certs"), "certs")
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
    gpus = _gpus(doc["gpus"]) if "gpus" in doc else ()
    return EvidenceDocument(kind, _b64(doc["evidence"], "evidence"), certs, nonce, public_key,
                            parse_time(doc["collected_at"], "collected_at"), simulated, gpus)


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


def _trust_for(trust: Any, kind: str, default: Any) -> Any:
    """`trust` is one TrustStore (for the CPU evidence) or a mapping {type: TrustStore}."""
    if isinstance(trust, dict):
        return trust.get(kind)
    return default


def verify_document_evidence(
    document: Any,
    *,
    at: dt.datetime | None = None,
    trust: Any = None,
    collateral: Any = None,
    expected_public_key: bytes | None = None,
    types: Any = None,
) -> Verified:
    """Cryptographic half of node attestation: parse and verify the CPU evidence and every GPU
    evidence next to it, check that the document binds `expected_public_key` and that each GPU
    nonce is derived from the CPU evidence. No policy is applied (see `validate_document`)."""
    from .registry import get_evidence_type

    doc = load_document(document)
    if expected_public_key is not None and doc.public_key != expected_public_key:
        raise KeyBindingError("evidence is bound to a different node key", field="public_key",
                              got=doc.public_key, expected=expected_public_key)
    et = get_evidence_type(doc.type, types)
    if getattr(et, "gpu", False):
        raise KeyBindingError(
            f"{doc.type} GPU evidence alone cannot attest a node key: the requester picks its nonce and the GPU "
            "says nothing about the software holding the key", field="type", got=doc.type,
            expected="CPU TEE evidence (snp, tdx) binding the key, with GPU evidence in 'gpus' "
                     "(nonce = gpu_nonce_for(CPU evidence, key))")
    verified = et.verify(et.parse(doc.evidence), at=at, trust=_trust_for(trust, doc.type, trust), certs=doc.certs,
                         collateral=collateral)
    attached = []
    expected_nonce = doc.gpu_nonce() if doc.gpus else b""
    for i, gpu in enumerate(doc.gpus):
        gt = get_evidence_type(gpu.type, types)
        if not getattr(gt, "gpu", False):
            raise EvidenceParseError("only GPU evidence may be listed in gpus", field=f"gpus[{i}].type",
                                     got=gpu.type, expected="a GPU evidence type (nvidia)")
        gv = gt.verify(gt.parse(gpu.evidence), at=at, trust=_trust_for(trust, gpu.type, None), certs=gpu.certs)
        if gv.claims.get("report_data") != expected_nonce:
            raise KeyBindingError("GPU evidence nonce is not derived from the CPU evidence and node key",
                                  field=f"gpus[{i}].nonce", got=gv.claims.get("report_data"), expected=expected_nonce)
        attached.append(gv)
    return replace(verified, attached=tuple(attached)) if attached else verified


def validate_document(verified: Verified, document: Any, policy: Any, *, now: dt.datetime | None = None,
                      types: Any = None) -> None:
    """Policy half of node attestation: the CPU evidence binds the document's key and nonce, and
    it and every attached GPU evidence satisfy the policy's `[attestation]` rules."""
    from .registry import get_evidence_type
    from .validate import section_of

    doc = load_document(document)
    section = section_of(policy)
    get_evidence_type(doc.type, types).validate(verified, section, public_key=doc.public_key, nonce=doc.nonce, now=now,
                                         collected_at=doc.collected_at)
    for gv in verified.attached:
        get_evidence_type(gv.type, types).validate(gv, section, now=now, collected_at=doc.collected_at,
                                            expected_report_data=doc.gpu_nonce())


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

    GPU-only documents fail (`KeyBindingError`); GPU evidence counts only in `gpus`, next to CPU
    evidence binding the key, with its nonce derived from that evidence. `types`: the evidence types
    to look the document's type up in (a name index or a list, e.g. the registered ones); None means
    the built-in types."""
    doc = load_document(document)
    verified = verify_document_evidence(doc, at=at, trust=trust, collateral=collateral,
                                        expected_public_key=expected_public_key, types=types)
    validate_document(verified, doc, policy, now=now, types=types)
    return verified
