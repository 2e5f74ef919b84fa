"""The receipt wire format: statement and predicate names, and the digests a statement signs.

Every digest is over RFC 8785 canonical JSON; statement format 2 salts each with the per-response
receipt secret under its own domain-separation tag. See docs/receipts.md for every field.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ...canonical import CanonicalizationError, canonical_json, sha256_hex
from .errors import ReceiptParseError, ReceiptSecretError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://specguard.dev/receipt/v1"
SUBJECT_NAME = "response"
RESPONSE_EXCLUDED_KEY = "specguard"
#: predicate key naming the response digest format; absent means version 1 (see response_digest)
RESPONSE_DIGEST_KEY = "response_digest_format"
RESPONSE_DIGEST_V1 = "specguard/response-digest/v1"
RESPONSE_DIGEST_V2 = "specguard/response-digest/v2"
RESPONSE_DIGEST_FORMATS = (RESPONSE_DIGEST_V1, RESPONSE_DIGEST_V2, "specguard/response-digest/v3")
#: statement format 2 (what nodes issue now): every content digest salted with the per-response
#: receipt secret; what is not a digest (parameters, lengths, finish reason, drafter statistics) is
#: only in the sealed part, which the public statement commits to under the same secret
PREDICATE_TYPE_V2 = "https://specguard.dev/receipt/v2"
PREDICATE_TYPES = (PREDICATE_TYPE, PREDICATE_TYPE_V2)
#: format v2 with the receipt secret as salt (statement format 2)
RESPONSE_DIGEST_V3 = "specguard/response-digest/v3"
SEALED_DIGEST_KEY = "sealed_digest"
#: receipt-document key outside the signature, only in the requester's copy: {"secret", "sealed"}
DISCLOSURE_KEY = "disclosure"
#: predicate fields that statement format 2 keeps only in the sealed part
SEALED_FIELDS = ("prompt_ids_digest", "output_ids_digest", "token_records_root", "token_records_count",
                 "params", "finish_reason", "drafter")
_TAG_RESPONSE = b"specguard/receipt-response/v1\x00"
_TAG_REQUEST = b"specguard/receipt-request/v1\x00"
_TAG_SEALED = b"specguard/receipt-sealed/v1\x00"
#: optional predicate key (receipts before it have none): {"name", "version", "model_file_digest"}
#: of the engine that generated the response, so a verifier knows what it re-checks
ENGINE_KEY = "engine"

HEX64_RE = re.compile(r"[0-9a-f]{64}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
RECEIPT_ID_RE = re.compile(r"[0-9a-f]{32}")


def strip_nulls(value: Any) -> Any:
    """`value` with every object member whose value is null removed, recursively.

    Array elements are kept as they are (a null in an array holds a position); objects inside
    arrays are stripped too.
    """
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def response_digest(response_obj: Any, version: str = RESPONSE_DIGEST_V2, secret: str | None = None) -> str:
    """Hex SHA-256 of the RFC 8785 JSON of the response body without its top-level "specguard" key.

    The "specguard" key carries the receipt itself (and other evidence), which cannot be part
    of what it signs; everything else the client received is covered. Format v2 first removes
    every null-valued object member (`strip_nulls`), so a body saved by the OpenAI SDK (which
    writes null for each absent optional field) hashes like the raw body; v1 (receipts without
    `predicate.response_digest_format`) hashes the body as it is; v3 (statement format 2) is v2
    salted with the receipt `secret`: SHA-256("specguard/receipt-response/v1" 0x00 ‖ secret ‖ JSON).
    """
    if not isinstance(response_obj, dict):
        raise ReceiptParseError("response must be a JSON object", field="response",
                                got=type(response_obj).__name__)
    if version not in RESPONSE_DIGEST_FORMATS:
        raise ReceiptParseError("unknown response digest format", field="predicate." + RESPONSE_DIGEST_KEY,
                                got=version, expected=list(RESPONSE_DIGEST_FORMATS))
    body = {k: v for k, v in response_obj.items() if k != RESPONSE_EXCLUDED_KEY}
    if version != RESPONSE_DIGEST_V1:
        body = strip_nulls(body)
    try:
        data = canonical_json(body)
    except CanonicalizationError as exc:
        raise ReceiptParseError("response is not canonicalizable JSON", field="response",
                                got=exc.message) from exc
    if version == RESPONSE_DIGEST_V3:
        return _salted(_TAG_RESPONSE, secret, data)
    return sha256_hex(data)


def new_receipt_secret() -> str:
    """A fresh per-response receipt secret: 32 random bytes, 64 lowercase hex digits."""
    return secrets.token_hex(32)


def secret_bytes(secret: Any) -> bytes:
    if not isinstance(secret, str) or not HEX64_RE.fullmatch(secret):
        raise ReceiptSecretError("a receipt secret is 64 lowercase hex digits", field="disclosure.secret",
                                 got=None if secret is None else f"{type(secret).__name__} of {len(str(secret))}")
    return bytes.fromhex(secret)


def _salted(tag: bytes, secret: Any, data: bytes) -> str:
    return sha256_hex(tag + secret_bytes(secret) + data)


def request_digest(request_obj: Any, secret: str | None = None) -> str:
    """`sha256:` of the canonical request (statement format 1), or salted with the receipt secret (format 2)."""
    try:
        data = canonical_json(dict(request_obj))
    except (CanonicalizationError, TypeError, ValueError) as exc:
        raise ReceiptParseError("request is not a canonicalizable JSON object", field="request") from exc
    return "sha256:" + (sha256_hex(data) if secret is None else _salted(_TAG_REQUEST, secret, data))


def sealed_digest(sealed: dict[str, Any], secret: str) -> str:
    """`sha256:` of SHA-256("specguard/receipt-sealed/v1" 0x00 ‖ secret ‖ RFC 8785 JSON of the sealed part)."""
    return "sha256:" + _salted(_TAG_SEALED, secret, canonical_json(sealed))

