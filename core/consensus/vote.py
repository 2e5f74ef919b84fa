"""Signed verifier votes.

A vote is the JSON object

    {"vote": BODY, "signature": base64(Ed25519(key, lp("specguard/consensus-vote/v2", JCS(BODY))))}

where JCS is RFC 8785 canonical JSON, lp the 8-byte big-endian length-prefixed concatenation
(specguard.canonical.lp) and BODY has exactly these keys:

    type               "specguard/consensus-vote/v2"
    receipt_digest     "sha256:<hex>" of the canonical JSON of the receipt's DSSE envelope
    binding_digest     the response binding (Transcript.binding_digest(), also in the receipt)
    request_digest     the receipt's request digest: of the client's request the verifier checked
    response_digest    "sha256:" + the receipt's subject digest (`attest.receipts.response_digest`)
                       of the response body the verifier checked
    nonce              lowercase hex (16..128 digits) chosen fresh by the requester
    verdict            "accept" | "reject" | "unverifiable"
    reasons            list of strings (why not accept; empty on accept)
    stats              object of re-derivation statistics (numbers, strings, null)
    verifier           {"key_id", "public_key" (64 hex), "model_digest", "attestation_digest" (or null)}
    issued_at          RFC 3339 UTC time

Binding the receipt digest and the requester's nonce means a vote cannot be replayed onto
another response or another request for the same response. v2 (this format) adds the request
and response-body digests: a v2 vote says the verifier re-derived the prompt from that request
and the body from the output ids. v1 votes (which only judged the node's token ids) do not parse.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..attest.dsse import b64decode_strict, b64encode
from ..attest.jsonio import Require
from ..canonical import CanonicalizationError, canonical_json, json_digest, lp
from ..errors import ParseError, VerificationError
from ..keys import NodeKey, key_id_for
from .rederive import VERDICTS, Judgement

VOTE_TYPE = "specguard/consensus-vote/v2"
VOTE_TAG = b"specguard/consensus-vote/v2"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NONCE = re.compile(r"(?:[0-9a-f]{2}){8,64}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_BODY_KEYS = {"type", "receipt_digest", "binding_digest", "request_digest", "response_digest", "nonce", "verdict",
              "reasons", "stats", "verifier", "issued_at"}
_VERIFIER_KEYS = {"key_id", "public_key", "model_digest", "attestation_digest"}
MAX_REASONS = 64
MAX_REASON_CHARS = 500


class VoteParseError(ParseError):
    """A vote is not well-formed (exit code 3)."""


class VoteSignatureError(VerificationError):
    """A vote's signature does not verify, or its key is not trusted (exit code 4)."""


_req = Require(VoteParseError)


def envelope_digest(envelope: dict[str, Any]) -> str:
    """The receipt digest votes bind: `sha256:` of the RFC 8785 JSON of the DSSE envelope."""
    return json_digest(envelope)


def signing_input(body: dict[str, Any]) -> bytes:
    """The exact bytes a verifier signs for `body`."""
    return lp(VOTE_TAG, canonical_json(body))


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Vote:
    """A parsed (and, when returned by `verify_vote`, signature-checked) vote."""

    body: dict[str, Any]
    signature: bytes

    @property
    def verdict(self) -> str:
        return self.body["verdict"]

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.body["verifier"]["public_key"])

    @property
    def key_id(self) -> str:
        return self.body["verifier"]["key_id"]

    @property
    def receipt_digest(self) -> str:
        return self.body["receipt_digest"]

    @property
    def request_digest(self) -> str:
        return self.body["request_digest"]

    @property
    def response_digest(self) -> str:
        return self.body["response_digest"]

    @property
    def nonce(self) -> str:
        return self.body["nonce"]

    def to_json(self) -> dict[str, Any]:
        return {"vote": self.body, "signature": b64encode(self.signature)}


@dataclass(frozen=True)
class VoteSubject:
    """What a vote is about and binds: the receipt, binding, request and response digests, and the
    requester's nonce."""

    receipt_digest: str
    binding_digest: str
    request_digest: str
    response_digest: str
    nonce: str


def sign_vote(
    key: NodeKey,
    subject: VoteSubject,
    judgement: Judgement,
    *,
    model_digest: str,
    attestation_digest: str | None = None,
    issued_at: str | None = None,
) -> dict[str, Any]:
    """Build and sign a vote on `subject` with `judgement`'s verdict, reasons and stats; return its
    JSON form. The body is validated before signing."""
    body = {
        "type": VOTE_TYPE,
        "receipt_digest": subject.receipt_digest,
        "binding_digest": subject.binding_digest,
        "request_digest": subject.request_digest,
        "response_digest": subject.response_digest,
        "nonce": subject.nonce,
        "verdict": judgement.verdict,
        "reasons": [str(r)[:MAX_REASON_CHARS] for r in judgement.reasons[:MAX_REASONS]],
        "stats": dict(judgement.stats),
        "verifier": {
            "key_id": key.key_id,
            "public_key": key.public_hex,
            "model_digest": model_digest,
            "attestation_digest": attestation_digest,
        },
        "issued_at": issued_at or utc_now(),
    }
    _check_body(body)
    return Vote(body, key.sign(signing_input(body))).to_json()


def _check_body(body: Any, where: str = "vote") -> None:
    _req(isinstance(body, dict), "must be a JSON object", where, type(body).__name__)
    _req(body.get("type") == VOTE_TYPE, "unknown vote type (v1 votes do not bind the request and response)",
         f"{where}.type", body.get("type"), VOTE_TYPE)
    _req(set(body) == _BODY_KEYS, "unexpected or missing keys", where, sorted(body), sorted(_BODY_KEYS))
    for name in ("receipt_digest", "binding_digest", "request_digest", "response_digest"):
        _req(isinstance(body[name], str) and bool(_DIGEST.fullmatch(body[name])), "must be sha256:<64 hex>",
             f"{where}.{name}", body[name])
    _req(isinstance(body["nonce"], str) and bool(_NONCE.fullmatch(body["nonce"])),
         "must be 16..128 lowercase hex digits", f"{where}.nonce", body["nonce"])
    _req(body["verdict"] in VERDICTS, "unknown verdict", f"{where}.verdict", body["verdict"], VERDICTS)
    reasons = body["reasons"]
    _req(isinstance(reasons, list) and len(reasons) <= MAX_REASONS
         and all(isinstance(r, str) and len(r) <= MAX_REASON_CHARS for r in reasons),
         f"must be a list of at most {MAX_REASONS} strings", f"{where}.reasons")
    _req(isinstance(body["stats"], dict), "must be an object", f"{where}.stats")
    ver = body["verifier"]
    _req(isinstance(ver, dict) and set(ver) == _VERIFIER_KEYS, "must have keys " + ",".join(sorted(_VERIFIER_KEYS)),
         f"{where}.verifier", sorted(ver) if isinstance(ver, dict) else type(ver).__name__)
    _req(isinstance(ver["public_key"], str) and bool(_HEX64.fullmatch(ver["public_key"])),
         "must be 64 lowercase hex digits", f"{where}.verifier.public_key", ver["public_key"])
    expected_id = key_id_for(bytes.fromhex(ver["public_key"]))
    _req(ver["key_id"] == expected_id, "key id does not match the public key", f"{where}.verifier.key_id",
         ver["key_id"], expected_id)
    _req(isinstance(ver["model_digest"], str) and bool(_DIGEST.fullmatch(ver["model_digest"])),
         "must be sha256:<64 hex>", f"{where}.verifier.model_digest", ver["model_digest"])
    att = ver["attestation_digest"]
    _req(att is None or (isinstance(att, str) and bool(_DIGEST.fullmatch(att))),
         "must be null or sha256:<64 hex>", f"{where}.verifier.attestation_digest", att)
    _req(isinstance(body["issued_at"], str) and bool(_TIME.fullmatch(body["issued_at"])),
         "must be an RFC 3339 UTC time", f"{where}.issued_at", body["issued_at"])
    try:
        canonical_json(body)
    except CanonicalizationError as exc:
        raise VoteParseError("vote is not canonicalizable JSON", field=where, got=exc.message) from exc


def parse_vote(obj: Any, where: str = "vote") -> Vote:
    """Parse a vote's JSON form strictly (structure only; the signature is not checked)."""
    _req(isinstance(obj, dict), "must be a JSON object", where, type(obj).__name__)
    _req(set(obj) == {"vote", "signature"}, "must have exactly the keys vote, signature", where, sorted(obj))
    _check_body(obj["vote"], where + ".vote")
    sig = b64decode_strict(obj["signature"], where + ".signature", VoteParseError)
    _req(len(sig) == 64, "Ed25519 signature must be 64 bytes", where + ".signature", len(sig))
    return Vote(obj["vote"], sig)


def verify_vote(obj: Any, trusted_keys: list[bytes], where: str = "vote") -> Vote:
    """Parse a vote and check its signature under one of `trusted_keys` (raw 32-byte Ed25519 keys).

    Raises VoteParseError when malformed and VoteSignatureError when the key is not trusted or
    the signature does not verify.
    """
    vote = parse_vote(obj, where)
    if vote.public_key not in {bytes(k) for k in trusted_keys}:
        raise VoteSignatureError("vote signed by a key that is not a trusted verifier key",
                                 field=where + ".verifier.public_key", got=vote.key_id,
                                 expected=sorted(key_id_for(bytes(k)) for k in trusted_keys))
    try:
        Ed25519PublicKey.from_public_bytes(vote.public_key).verify(vote.signature, signing_input(vote.body))
    except InvalidSignature as exc:
        raise VoteSignatureError("vote signature does not verify", field=where + ".signature",
                                 got=vote.key_id) from exc
    return vote
