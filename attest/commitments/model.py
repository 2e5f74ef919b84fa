"""A node's commitment to its model, and per-response evidence that links to it.

m = hash_to_field(model_digest as UTF-8, DST_MODEL); the node keeps (model_digest, r) secret
in `home/keys/model-commitment.json` (mode 0600, created on first use) and publishes
C = m·G + r·H. For each response it commits afresh, C_i = m·G + r_i·H, and proves that C_i and
C hide the same value (the equality proof), under a Fiat–Shamir context that binds the
response's binding digest, the node's public key and the receipt id (`response_context`,
evidence version 2). An auditor who
is given (model_digest, r) checks the opening against a model digest they computed themselves.

What this shows and what it does not: see docs/commitments.md ("What the proofs prove").
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, SpecguardError, UsageError, VerificationError
from .encoding import equality_proof_from_json, equality_proof_to_json, scalar_hex
from .group import (
    CommitmentParseError,
    G1Point,
    decode_point_hex,
    decode_scalar_hex,
    generator_g,
    hash_to_scalar,
    random_scalar,
)
from .pedersen import OpeningError, commit, commit_with_mg, verify_opening
from .proofs import SUITE, VERSION, ProofError, prove_equality, response_context, verify_equality

log = logging.getLogger("specguard.commitments")

DST_MODEL = b"SPECGUARD-V1-MODEL-DIGEST"
SECRET_FILE = "model-commitment.json"
SECRET_TYPE = "model-commitment-secret"
EVIDENCE_SLOT = "commitment"
#: the secret file's format (unchanged by proof version 2: (m, r, C) are the same)
SECRET_VERSION = 1
EVIDENCE_KEYS = frozenset({"suite", "version", "published", "response", "equality_proof", "context"})

_lock = threading.Lock()
_cache: dict[tuple[str, str], ModelCommitmentSecret] = {}


class CommitmentEvidenceError(VerificationError):
    """A receipt's commitment evidence is malformed, bound to another response, or unpinned-mismatched."""


def model_scalar(model_digest: str) -> int:
    """The committed message: RFC 9380 hash_to_field of the digest string's UTF-8 bytes."""
    if not isinstance(model_digest, str) or not model_digest:
        raise UsageError("model digest must be a non-empty string", field="model_digest",
                         got=model_digest if not isinstance(model_digest, str) else "")
    return hash_to_scalar(model_digest.encode("utf-8"), DST_MODEL)


@dataclass
class ModelCommitmentSecret:
    """(model_digest, r) and the published C = m·G + r·H. Never log or serve `blinding`."""

    model_digest: str
    blinding: int
    commitment: G1Point
    created: str = ""
    _m_point: G1Point | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"ModelCommitmentSecret(commitment={self.commitment.hex()}, model_digest={self.model_digest!r})"

    @property
    def m(self) -> int:
        return model_scalar(self.model_digest)

    @property
    def m_point(self) -> G1Point:
        """m·G, computed once: each response then costs one fixed-base multiplication by H."""
        if self._m_point is None:
            self._m_point = generator_g().mul(self.m)
        return self._m_point

    def to_json(self) -> dict[str, Any]:
        return {"version": SECRET_VERSION, "suite": SUITE, "type": SECRET_TYPE, "model_digest": self.model_digest,
                "blinding": scalar_hex(self.blinding), "commitment": self.commitment.hex(),
                "created": self.created}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ModelCommitmentSecret:
        keys = {"version", "suite", "type", "model_digest", "blinding", "commitment", "created"}
        if not isinstance(doc, dict) or set(doc) != keys:
            raise ConfigError("model commitment secret file has the wrong shape", field=where,
                              got=sorted(doc) if isinstance(doc, dict) else type(doc).__name__,
                              expected=sorted(keys))
        if doc["version"] != SECRET_VERSION or doc["suite"] != SUITE or doc["type"] != SECRET_TYPE:
            raise ConfigError("model commitment secret file has an unsupported version or suite", field=where,
                              got=[doc["version"], doc["suite"], doc["type"]],
                              expected=[SECRET_VERSION, SUITE, SECRET_TYPE])
        try:
            secret = cls(model_digest=doc["model_digest"],
                         blinding=decode_scalar_hex(doc["blinding"], "blinding"),
                         commitment=decode_point_hex(doc["commitment"], "commitment"),
                         created=str(doc["created"]))
            verify_opening(secret.commitment, secret.m, secret.blinding)
        except (CommitmentParseError, OpeningError, UsageError) as exc:
            raise ConfigError(f"model commitment secret file is invalid: {exc.message}", field=where,
                              got=exc.got) from exc
        return secret


def secret_path(home: Path) -> Path:
    return Path(home) / "keys" / SECRET_FILE


def load_secret(home: Path) -> ModelCommitmentSecret:
    """Read this node's secret; ConfigError if it is missing, unreadable, too open or inconsistent."""
    path = secret_path(home)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError as exc:
        raise ConfigError("this node has no model commitment yet (it is created when the server first "
                          "serves a model)", field=str(path)) from exc
    if mode & 0o077:
        raise ConfigError("model commitment secret is readable by others; chmod 600 it", field=str(path),
                          got=oct(mode), expected="0o600")
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("model commitment secret file is not readable JSON", field=str(path),
                          got=str(exc)) from exc
    return ModelCommitmentSecret.from_json(doc, str(path))


def load_or_create_secret(home: Path, model_digest: str) -> ModelCommitmentSecret:
    """The node's secret for `model_digest`, created (mode 0600) on first use.

    If the stored secret commits to another model digest, it is kept as
    `model-commitment-<first 16 hex of its commitment>.json` (so the old commitment can still be
    opened to an auditor) and a new one is created, with a warning: the published commitment
    changes, which clients that pinned the old one will notice.
    """
    model_scalar(model_digest)
    key = (str(Path(home).resolve()), model_digest)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        path = secret_path(home)
        if path.exists():
            secret = load_secret(home)
            if secret.model_digest == model_digest:
                _cache[key] = secret
                return secret
            archive = path.with_name(f"model-commitment-{secret.commitment.hex()[:16]}.json")
            os.replace(path, archive)
            log.warning("model changed from %s to %s: new model commitment; the old secret is kept at %s",
                        secret.model_digest, model_digest, archive)
        secret = _create(path, model_digest)
        _cache[key] = secret
        return secret


def _create(path: Path, model_digest: str) -> ModelCommitmentSecret:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    r = random_scalar()
    secret = ModelCommitmentSecret(model_digest=model_digest, blinding=r, commitment=commit(model_scalar(model_digest), r),
                                   created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(secret.to_json(), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and fails if another process created it first
        except FileExistsError:
            other = load_secret(path.parent.parent)
            if other.model_digest != model_digest:
                raise ConfigError("another process created a commitment to a different model", field=str(path),
                                  got=other.model_digest, expected=model_digest) from None
            return other
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created model commitment %s at %s", secret.commitment.hex(), path)
    return secret


def published_document(secret: ModelCommitmentSecret, key_id: str) -> dict[str, Any]:
    """What `GET /specguard/v1/commitment` serves: no secret in it."""
    return {"suite": SUITE, "version": VERSION, "commitment": secret.commitment.hex(), "key_id": key_id}


# --- per-response evidence -------------------------------------------------------------------


def response_evidence(secret: ModelCommitmentSecret, binding_digest: str, *, node_public_key: bytes,
                      receipt_id: str) -> dict[str, Any]:
    """A fresh commitment to the node's model and an equality proof to the published one.

    The proof's context binds the binding digest, the node's public key and the receipt id the
    evidence goes into, so it cannot be moved to another node's or another receipt's statement."""
    if not isinstance(binding_digest, str) or not binding_digest:
        raise UsageError("binding digest must be a non-empty string", field="binding_digest")
    context = response_context(binding_digest, node_public_key, receipt_id)
    r_i = random_scalar()
    c_i = commit_with_mg(secret.m_point, r_i)
    while c_i == secret.commitment:  # r_i == r: probability 1/r; a fresh commitment must differ
        r_i = random_scalar()
        c_i = commit_with_mg(secret.m_point, r_i)
    proof = prove_equality(c_i, r_i, secret.commitment, secret.blinding, context)
    return {
        "suite": SUITE,
        "version": VERSION,
        "published": secret.commitment.hex(),
        "response": c_i.hex(),
        "equality_proof": equality_proof_to_json(proof),
        "context": binding_digest,
    }


def _node_key_bytes(node_public_key: Any) -> bytes:
    if isinstance(node_public_key, str):
        try:
            node_public_key = bytes.fromhex(node_public_key)
        except ValueError:
            node_public_key = None
    if not isinstance(node_public_key, bytes | bytearray) or len(node_public_key) != 32:
        raise CommitmentEvidenceError("no node public key to check the commitment evidence against",
                                      field="predicate.node.public_key", got=node_public_key,
                                      expected="32-byte Ed25519 key (hex)")
    return bytes(node_public_key)


def verify_response_evidence(value: Any, binding_digest: Any, pinned_commitment: str | None = None, *,
                             node_public_key: Any, receipt_id: Any) -> dict[str, Any]:
    """Verify a receipt's commitment evidence; return a summary or raise a VerificationError subclass.

    `binding_digest`, `node_public_key` (bytes or hex) and `receipt_id` come from the verified
    receipt statement (never from the evidence); `pinned_commitment` (hex) is the node's published
    commitment as the verifier knows it from elsewhere. Without a pin the check is only against
    the commitment the node declares. Version-1 evidence (whose proof did not bind the node key
    and receipt id) is rejected with its own message.
    """
    try:
        if not isinstance(value, dict) or set(value) != EVIDENCE_KEYS:
            raise CommitmentEvidenceError("commitment evidence has unexpected or missing keys", field="commitment",
                                          got=sorted(value) if isinstance(value, dict) else type(value).__name__,
                                          expected=sorted(EVIDENCE_KEYS))
        if value["version"] == 1 and not isinstance(value["version"], bool):
            raise CommitmentEvidenceError("commitment evidence version 1 is no longer accepted: its proof does not "
                                          "bind the node key and receipt id (re-issue the receipt)",
                                          field="commitment.version", got=1, expected=VERSION)
        if value["version"] != VERSION or isinstance(value["version"], bool) or value["suite"] != SUITE:
            raise CommitmentEvidenceError("unsupported commitment evidence version or suite",
                                          field="commitment.suite", got=[value["version"], value["suite"]],
                                          expected=[VERSION, SUITE])
        if not isinstance(binding_digest, str) or not binding_digest:
            raise CommitmentEvidenceError("no binding digest to check the commitment evidence against",
                                          field="predicate.binding_digest", got=binding_digest)
        if value["context"] != binding_digest:
            raise CommitmentEvidenceError("commitment evidence is bound to another response",
                                          field="commitment.context", got=value["context"], expected=binding_digest)
        key = _node_key_bytes(node_public_key)
        if not isinstance(receipt_id, str) or not receipt_id:
            raise CommitmentEvidenceError("no receipt id to check the commitment evidence against",
                                          field="predicate.receipt_id", got=receipt_id)
        if pinned_commitment is not None and value["published"] != pinned_commitment.lower():
            raise CommitmentEvidenceError("published commitment differs from the pinned one",
                                          field="commitment.published", got=value["published"],
                                          expected=pinned_commitment.lower())
        published = decode_point_hex(value["published"], "commitment.published", cache=True)
        response = decode_point_hex(value["response"], "commitment.response")
        if response == published:
            raise CommitmentEvidenceError("the response commitment is the published commitment itself (C_i == C)",
                                          field="commitment.response", got=value["response"],
                                          expected="a fresh commitment")
        proof = equality_proof_from_json(value["equality_proof"], "commitment.equality_proof")
        verify_equality(response, published, proof, response_context(binding_digest, key, receipt_id))
    except (CommitmentEvidenceError, ProofError):
        raise
    except SpecguardError as exc:  # malformed points, scalars or documents
        raise CommitmentEvidenceError(f"malformed commitment evidence: {exc.message}", field=exc.field,
                                      got=exc.got, expected=exc.expected) from exc
    return {
        "slot": EVIDENCE_SLOT,
        "verified": "equality proof: the response commitment hides the same model digest as the published one",
        "suite": SUITE,
        "published": value["published"],
        "response": value["response"],
        "context": binding_digest,
        "node_key": key.hex(),
        "receipt_id": receipt_id,
        "pinned": pinned_commitment is not None,
    }


# --- opening to an auditor -------------------------------------------------------------------


def check_opening(commitment_hex: Any, digest: Any, blinding_hex: Any,
                  model_digest: str | None = None) -> dict[str, Any]:
    """Check that (digest, r) opens the commitment, and, given one, that digest is the auditor's model.

    Raises a CommitmentParseError for malformed input and OpeningError when it does not open.
    """
    c = decode_point_hex(commitment_hex, "commitment")
    r = decode_scalar_hex(blinding_hex, "blinding")
    m = model_scalar(digest)
    verify_opening(c, m, r)
    if model_digest is not None and model_digest != digest:
        raise OpeningError("the commitment opens to a different model than the one loaded", field="digest",
                           got=digest, expected=model_digest)
    return {"commitment": c.hex(), "model_digest": digest, "opens": True,
            "model_checked": model_digest is not None}
