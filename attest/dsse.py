"""DSSE (Dead Simple Signing Envelope) with Ed25519, as used by in-toto and Sigstore.

Signatures are over PAE(payloadType, payload) =
    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
with LEN the ASCII decimal byte length. The envelope is
    {"payload": b64(body), "payloadType": type, "signatures": [{"keyid": id, "sig": b64(sig)}]}
Parsing is strict so that any changed byte is detected: exactly these keys, standard base64
with padding in its one canonical spelling, and the `keyid` of a verifying signature must be the
key id of the key that verified it (DSSE treats keyid as an unsigned hint; we pin it).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import ParseError, VerificationError
from ..keys import NodeKey, key_id_for

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_SIGNATURES = 16


class EnvelopeParseError(ParseError):
    """The DSSE envelope is not well-formed (exit code 3)."""


class SignatureError(VerificationError):
    """No trusted key produced a valid signature over the envelope (exit code 10)."""

    exit_code = 10


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of (type, body)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: Any, field: str, error: type[ParseError] = EnvelopeParseError) -> bytes:
    """Standard base64 with padding, accepted only in its canonical spelling."""
    if not isinstance(text, str):
        raise error("expected a base64 string", field=field, got=type(text).__name__)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise error("invalid base64", field=field, got=text[:40]) from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise error("non-canonical base64", field=field, got=text[:40])
    return raw


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope."""

    payload: bytes
    payload_type: str
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, raw signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": k, "sig": b64encode(s)} for k, s in self.signatures],
        }


def sign_envelope(payload: bytes, key: NodeKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> dict[str, Any]:
    """Sign `payload` with the node key; return the envelope as a JSON object."""
    sig = key.sign(pae(payload_type, payload))
    return Envelope(payload, payload_type, ((key.key_id, sig),)).to_json()


def parse_envelope(obj: Any) -> Envelope:
    """Parse a DSSE envelope JSON object strictly; raise EnvelopeParseError on any deviation."""
    if not isinstance(obj, dict):
        raise EnvelopeParseError("envelope must be a JSON object", field="envelope", got=type(obj).__name__)
    expected = {"payload", "payloadType", "signatures"}
    if set(obj) != expected:
        raise EnvelopeParseError("envelope has unexpected or missing keys", field="envelope",
                                 got=sorted(obj), expected=sorted(expected))
    payload = b64decode_strict(obj["payload"], "envelope.payload")
    ptype = obj["payloadType"]
    if not isinstance(ptype, str) or not ptype:
        raise EnvelopeParseError("payloadType must be a non-empty string", field="envelope.payloadType",
                                 got=ptype)
    sigs = obj["signatures"]
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_SIGNATURES:
        raise EnvelopeParseError(f"signatures must be a list of 1..{MAX_SIGNATURES} entries",
                                 field="envelope.signatures", got=sigs if not isinstance(sigs, list) else len(sigs))
    parsed: list[tuple[str, bytes]] = []
    for i, s in enumerate(sigs):
        field = f"envelope.signatures[{i}]"
        if not isinstance(s, dict) or set(s) != {"keyid", "sig"}:
            raise EnvelopeParseError("signature must be {keyid, sig}", field=field,
                                     got=sorted(s) if isinstance(s, dict) else type(s).__name__)
        if not isinstance(s["keyid"], str):
            raise EnvelopeParseError("keyid must be a string", field=field + ".keyid", got=s["keyid"])
        parsed.append((s["keyid"], b64decode_strict(s["sig"], field + ".sig")))
    return Envelope(payload, ptype, tuple(parsed))


def verify_envelope(envelope: Envelope, public_keys: list[bytes], payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> str:
    """Check that one of `public_keys` signed the envelope; return that key's key id.

    Every signature present must either verify under a key whose key id equals its keyid or
    carry a keyid of none of the given keys; a signature claiming a given key's id that does
    not verify is an error (it means the envelope was altered).
    """
    if envelope.payload_type != payload_type:
        raise SignatureError("unexpected payloadType", field="envelope.payloadType",
                             got=envelope.payload_type, expected=payload_type)
    if not public_keys:
        raise SignatureError("no public key to verify the envelope with", field="trusted_keys")
    message = pae(envelope.payload_type, envelope.payload)
    by_id = {key_id_for(k): k for k in public_keys}
    verified: str | None = None
    for i, (keyid, sig) in enumerate(envelope.signatures):
        key = by_id.get(keyid)
        if key is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError("signature does not verify", field=f"envelope.signatures[{i}].sig",
                                 got=keyid) from exc
        verified = keyid
    if verified is None:
        raise SignatureError("no signature by a trusted key", field="envelope.signatures[].keyid",
                             got=[k for k, _ in envelope.signatures], expected=sorted(by_id))
    return verified
