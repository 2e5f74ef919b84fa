"""Receipts: a signed in-toto Statement per response, logged in the node's transparency log.

A receipt document is
    {"receipt_id": <uuid4 hex>,
     "envelope": <DSSE envelope over the canonical JSON of the in-toto Statement>,
     "log": {"origin", "index", "tree_size", "inclusion_proof": [hex...], "checkpoint": <signed note>}}
The statement is signed; the "log" part cannot be (the signature is what gets logged) but is
itself verifiable: the inclusion proof leads from the envelope's leaf hash to the root of a
checkpoint signed by the same node key. `verify_receipt` walks every layer and raises one
error class per layer (exit codes: parse 3, signature 10, response/request digest and response
text 11, token records 12, log 13, evidence 14; a policy rule 5). It is a pure library: what to
check comes as one `VerifyOptions`, and evidence slots are checked by the `evidence_verifier`
the caller passes (the CLI passes the plugins' `verify_evidence` hook). The full format is
documented in docs/receipts.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..canonical import CanonicalizationError, canonical_json, sha256_hex
from ..errors import ParseError, SpecguardError, ValidationError, VerificationError
from ..keys import NodeKey, key_id_for
from ..transcript import LOGPROB_DECIMALS, TokenRecord, Transcript, ids_digest
from . import dsse, jsonio, merkle
from .checkpoint import Checkpoint, CheckpointParseError, check_consistency, verify_checkpoint
from .disclosure import token_records_root
from .dsse import SignatureError
from .merkle import LogProofError
from .options import EvidenceVerifier, VerifyOptions
from .request_defaults import DEFAULTS_KEY, ExpectedDefaults, RequestDefaults, check_params
from .tlog import LOG_FILE, Appended, TransparencyLog

log = logging.getLogger("specguard.receipts")

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

__all__ = [
    "ReceiptIssuer", "VerifiedReceipt", "verify_receipt", "build_statement", "response_digest",
    "token_records_root", "default_origin", "ReceiptParseError", "SignatureError",
    "SubjectDigestError", "TokenRootError", "LogProofError", "EvidenceError", "RequestDigestError",
    "ResponseTextError", "UnpinnedKeyError", "MissingEvidenceError", "VerifyOptions", "strip_nulls",
]


# --- errors: one class per layer --------------------------------------------------------------


class ReceiptParseError(ParseError):
    """The receipt document, envelope or statement is malformed (exit code 3)."""


class SubjectDigestError(VerificationError):
    """The response does not match the statement's subject digest (exit code 11)."""

    exit_code = 11


class TokenRootError(VerificationError):
    """Token records do not match the signed token-records root or output ids (exit code 12)."""

    exit_code = 12


class EvidenceError(VerificationError):
    """An evidence slot failed verification in a plugin (exit code 14)."""

    exit_code = 14


class MissingEvidenceError(EvidenceError):
    """A layer the user asked for (an option or the policy) is absent from the receipt, or no
    verifier checked it (exit code 14)."""


class RequestDigestError(VerificationError):
    """The request the user gives is not the one whose digest the receipt signs (exit code 11)."""

    exit_code = 11


class ResponseTextError(VerificationError):
    """The response body's text or finish reason is not what the signed output ids decode to
    (exit code 11)."""

    exit_code = 11


class ReceiptSecretError(VerificationError):
    """A check needs the content a format-2 receipt seals, but the receipt secret is missing or does
    not open it (exit code 11)."""

    exit_code = 11


class UnpinnedKeyError(SignatureError):
    """No trusted node key was given and unpinned verification was not allowed (exit code 10)."""


# --- building ---------------------------------------------------------------------------------


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


def _secret_bytes(secret: Any) -> bytes:
    if not isinstance(secret, str) or not _HEX64.fullmatch(secret):
        raise ReceiptSecretError("a receipt secret is 64 lowercase hex digits", field="disclosure.secret",
                                 got=None if secret is None else f"{type(secret).__name__} of {len(str(secret))}")
    return bytes.fromhex(secret)


def _salted(tag: bytes, secret: Any, data: bytes) -> str:
    return sha256_hex(tag + _secret_bytes(secret) + data)


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


def default_origin(key: NodeKey) -> str:
    """The log origin (and checkpoint key name) a node uses unless configured otherwise."""
    return "specguard/node-" + key.key_id.split(":", 1)[1]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _drafter_stats(transcript: Transcript) -> dict[str, Any]:
    m = transcript.metrics()
    return {
        "name": transcript.drafter,
        "trusted": bool(transcript.drafter_trusted),
        "drafted_tokens": m["drafted_tokens"],
        "accepted_tokens": m["accepted_tokens"],
        "acceptance_rate": round(float(m["acceptance_rate"]), LOGPROB_DECIMALS),
        "mean_accepted_tokens": round(float(m["mean_accepted_tokens"]), LOGPROB_DECIMALS),
        "steps": m["steps"],
    }


def build_statement(
    transcript: Transcript,
    request_obj: dict[str, Any],
    response_obj: dict[str, Any],
    evidence: dict[str, Any],
    policy: Any,
    key: NodeKey,
    *,
    issued_at: str | None = None,
    receipt_id: str | None = None,
    request_defaults: RequestDefaults | None = None,
) -> dict[str, Any]:
    """The in-toto Statement for one response (see docs/receipts.md for every field).

    With `transcript.salt` (the receipt secret) this is statement format 2: the public predicate
    shows only salted digests and commits to the sealed part (`sealed_part`); without, format 1.
    """
    secret = transcript.salt or None
    predicate: dict[str, Any] = {
        "binding_digest": transcript.binding_digest(),
        "model": {
            "name": transcript.model_name,
            "digest": transcript.model_digest,
            "tokenizer_digest": transcript.tokenizer_digest,
        },
        "request_digest": request_digest(request_obj, secret),
        "logprob_decimals": LOGPROB_DECIMALS,
        ENGINE_KEY: transcript.engine_info(),
        "policy": {"name": getattr(policy, "name", None), "digest": getattr(policy, "digest", None)},
        "node": {"key_id": key.key_id, "public_key": key.public_hex},
        "evidence": dict(evidence or {}),
        "issued_at": issued_at or _utc_now(),
        "receipt_id": receipt_id or uuid.uuid4().hex,
        RESPONSE_DIGEST_KEY: RESPONSE_DIGEST_V3 if secret else RESPONSE_DIGEST_V2,
    }
    if request_defaults is not None:
        predicate[DEFAULTS_KEY] = request_defaults.to_json()
    sealed = sealed_part(transcript)
    if secret:
        predicate[SEALED_DIGEST_KEY] = sealed_digest(sealed, secret)
    else:
        predicate.update(sealed)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": SUBJECT_NAME, "digest": {"sha256": response_digest(
            response_obj, predicate[RESPONSE_DIGEST_KEY], secret)}}],
        "predicateType": PREDICATE_TYPE_V2 if secret else PREDICATE_TYPE,
        "predicate": predicate,
    }


def sealed_part(transcript: Transcript) -> dict[str, Any]:
    """What statement format 2 shows only to the requester: token digests, lengths, parameters."""
    return {
        "prompt_ids_digest": ids_digest(transcript.prompt_ids),
        "output_ids_digest": ids_digest(transcript.output_ids),
        "token_records_root": token_records_root(list(transcript.tokens)),
        "token_records_count": len(transcript.tokens),
        "params": transcript.params.to_json(),
        "finish_reason": transcript.finish_reason,
        "drafter": _drafter_stats(transcript),
    }


class ReceiptIssuer:
    """Signs receipts with the node key and appends them durably to the node's log.

    The log lives at `home`/log/log.sqlite3; stored receipts survive restarts.
    """

    def __init__(self, home: Path, key: NodeKey, origin: str | None = None) -> None:
        self.home = Path(home)
        self.key = key
        self.origin = origin or default_origin(key)
        self.log = TransparencyLog(self.home / "log" / LOG_FILE, self.origin, key)

    def issue(self, transcript: Transcript, request_obj: dict[str, Any], response_obj: dict[str, Any],
              evidence: dict[str, Any], policy: Any, *, receipt_id: str | None = None,
              request_defaults: RequestDefaults | None = None) -> dict[str, Any]:
        """Build, sign and log one receipt; return the requester's receipt document once it is durable.

        `receipt_id` is the id chosen before sealing (evidence may bind it); a fresh one if None.
        The receipt secret is `transcript.salt`; when it is empty a fresh one is set here (the server
        sets it before `seal_transcript`, since evidence binds the salted binding digest). The
        log stores (and serves) the public document; the returned one adds the `disclosure`
        ({"secret", "sealed"}) only the requester gets.
        """
        if not transcript.salt:  # evidence sealed before this bound the unsalted binding digest
            transcript.salt = new_receipt_secret()
        statement = build_statement(transcript, request_obj, response_obj, evidence, policy, self.key,
                                    receipt_id=receipt_id, request_defaults=request_defaults)
        envelope = dsse.sign_envelope(canonical_json(statement), self.key)
        receipt_id = statement["predicate"]["receipt_id"]
        out: dict[str, Any] = {}

        def attach(appended: Appended) -> tuple[str, bytes]:
            out.update(receipt_document(receipt_id, envelope, self.origin, appended))
            return receipt_id, canonical_json(out)

        self.log.append(canonical_json(envelope), attach)
        out[DISCLOSURE_KEY] = {"secret": transcript.salt, "sealed": sealed_part(transcript)}
        return out

    def get_receipt(self, receipt_id: str) -> dict[str, Any] | None:
        """A previously issued receipt document, or None."""
        if not isinstance(receipt_id, str) or not re.fullmatch(r"[0-9a-f]{32}", receipt_id):
            return None
        return self.log.get_receipt(receipt_id)

    def close(self) -> None:
        self.log.close()


def receipt_document(receipt_id: str, envelope: dict[str, Any], origin: str, appended: Appended) -> dict[str, Any]:
    return {
        "receipt_id": receipt_id,
        "envelope": envelope,
        "log": {
            "origin": origin,
            "index": appended.index,
            "tree_size": appended.tree_size,
            "inclusion_proof": [h.hex() for h in appended.inclusion_proof],
            "checkpoint": appended.checkpoint,
        },
    }


# --- verifying --------------------------------------------------------------------------------


@dataclass
class VerifiedReceipt:
    """What `verify_receipt` established, layer by layer."""

    receipt_id: str
    statement: dict[str, Any]
    key_id: str
    public_key: bytes
    key_pinned: bool
    log_index: int
    checkpoint: Checkpoint
    layers: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def predicate(self) -> dict[str, Any]:
        return self.statement["predicate"]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "receipt_id": self.receipt_id,
            "key_id": self.key_id,
            "public_key": self.public_key.hex(),
            "key_pinned": self.key_pinned,
            "log": {"origin": self.checkpoint.origin, "index": self.log_index,
                    "tree_size": self.checkpoint.size, "root": self.checkpoint.root.hex()},
            "layers": self.layers,
            "evidence": self.evidence,
            "subject": self.statement["subject"][0]["digest"]["sha256"],
            "binding_digest": self.predicate["binding_digest"],
        }


def loads_strict(data: bytes | str, what: str, error: type[ParseError] = ReceiptParseError) -> Any:
    """`specguard.attest.jsonio.loads_strict`, failing with ReceiptParseError by default."""
    return jsonio.loads_strict(data, what, error)


_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RID = re.compile(r"[0-9a-f]{32}")


def _require(cond: bool, message: str, field: str, got: Any = None, expected: Any = None) -> None:
    if not cond:
        raise ReceiptParseError(message, field=field, got=got, expected=expected)


def _keys(obj: Any, field: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    _require(isinstance(obj, dict), "must be a JSON object", field, type(obj).__name__)
    missing, extra = required - set(obj), set(obj) - required - optional
    _require(not missing, "missing keys", field, sorted(missing))
    _require(not extra, "unexpected keys", field, sorted(extra))
    return obj


def _int(value: Any, field: str) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63,
             "must be a non-negative integer", field, value)
    return value


_PREDICATE_KEYS = {
    "binding_digest", "model", "request_digest", "prompt_ids_digest", "output_ids_digest",
    "token_records_root", "token_records_count", "logprob_decimals", "params", "finish_reason",
    "drafter", "policy", "node", "evidence", "issued_at", "receipt_id",
}


_PUBLIC_KEYS_V2 = (_PREDICATE_KEYS - set(SEALED_FIELDS)) | {SEALED_DIGEST_KEY, RESPONSE_DIGEST_KEY, ENGINE_KEY}


def _check_predicate_keys(predicate_type: str, predicate: Any) -> dict[str, Any]:
    """Exact key sets: format 1 (everything in clear) or format 2 (salted digests + sealed digest)."""
    if predicate_type == PREDICATE_TYPE:
        p = _keys(predicate, "predicate", _PREDICATE_KEYS, frozenset({RESPONSE_DIGEST_KEY, ENGINE_KEY, DEFAULTS_KEY}))
        formats: tuple[str, ...] = (RESPONSE_DIGEST_V1, RESPONSE_DIGEST_V2)
    else:
        p = _keys(predicate, "predicate", _PUBLIC_KEYS_V2, frozenset({DEFAULTS_KEY}))
        formats = (RESPONSE_DIGEST_V3,)
    _require(p.get(RESPONSE_DIGEST_KEY, RESPONSE_DIGEST_V1) in formats, "unknown response digest format",
             f"predicate.{RESPONSE_DIGEST_KEY}", p.get(RESPONSE_DIGEST_KEY), list(formats))
    return p


def check_sealed(p: dict[str, Any], where: str) -> None:
    """The fields a format-2 statement seals (in a format-1 predicate or a disclosure's `sealed`)."""
    for name in ("prompt_ids_digest", "output_ids_digest"):
        _require(isinstance(p[name], str) and bool(_DIGEST.fullmatch(p[name])), "must be sha256:<hex>",
                 f"{where}.{name}", p[name])
    _require(isinstance(p["token_records_root"], str) and bool(_HEX64.fullmatch(p["token_records_root"])),
             "must be 64 lowercase hex digits", f"{where}.token_records_root", p["token_records_root"])
    _int(p["token_records_count"], f"{where}.token_records_count")
    _require(isinstance(p["params"], dict), "must be an object", f"{where}.params")
    _require(isinstance(p["finish_reason"], str), "must be a string", f"{where}.finish_reason", p["finish_reason"])
    _keys(p["drafter"], f"{where}.drafter", {"name", "trusted", "drafted_tokens", "accepted_tokens",
                                             "acceptance_rate", "mean_accepted_tokens", "steps"})


def parse_statement(payload: bytes) -> dict[str, Any]:
    """Parse the signed payload: canonical JSON of an in-toto Statement with our predicate."""
    st = loads_strict(payload, "statement")
    try:
        canonical = canonical_json(st)
    except CanonicalizationError as exc:
        raise ReceiptParseError("statement is not canonicalizable", field="statement") from exc
    _require(canonical == payload, "signed payload is not RFC 8785 canonical JSON", "envelope.payload")
    _keys(st, "statement", {"_type", "subject", "predicateType", "predicate"})
    _require(st["_type"] == STATEMENT_TYPE, "unexpected statement type", "statement._type", st["_type"],
             STATEMENT_TYPE)
    _require(st["predicateType"] in PREDICATE_TYPES, "unexpected predicate type", "statement.predicateType",
             st["predicateType"], list(PREDICATE_TYPES))
    subj = st["subject"]
    _require(isinstance(subj, list) and len(subj) == 1, "exactly one subject expected", "statement.subject")
    _keys(subj[0], "statement.subject[0]", {"name", "digest"})
    _require(subj[0]["name"] == SUBJECT_NAME, "subject name", "statement.subject[0].name", subj[0]["name"],
             SUBJECT_NAME)
    _keys(subj[0]["digest"], "statement.subject[0].digest", {"sha256"})
    _require(isinstance(subj[0]["digest"]["sha256"], str) and bool(_HEX64.fullmatch(subj[0]["digest"]["sha256"])),
             "subject digest must be 64 lowercase hex digits", "statement.subject[0].digest.sha256")
    p = _check_predicate_keys(st["predicateType"], st["predicate"])
    for name in ("binding_digest", "request_digest"):
        _require(isinstance(p[name], str) and bool(_DIGEST.fullmatch(p[name])), "must be sha256:<hex>",
                 f"predicate.{name}", p[name])
    _require(p["logprob_decimals"] == LOGPROB_DECIMALS, "unsupported logprob precision",
             "predicate.logprob_decimals", p["logprob_decimals"], LOGPROB_DECIMALS)
    _keys(p["model"], "predicate.model", {"name", "digest", "tokenizer_digest"})
    if st["predicateType"] == PREDICATE_TYPE:
        check_sealed(p, "predicate")
    else:
        _require(isinstance(p[SEALED_DIGEST_KEY], str) and bool(_DIGEST.fullmatch(p[SEALED_DIGEST_KEY])),
                 "must be sha256:<hex>", f"predicate.{SEALED_DIGEST_KEY}", p[SEALED_DIGEST_KEY])
    if DEFAULTS_KEY in p:
        RequestDefaults.from_json(p[DEFAULTS_KEY])
    _keys(p["policy"], "predicate.policy", {"name", "digest"})
    if ENGINE_KEY in p:
        engine = _keys(p[ENGINE_KEY], "predicate.engine", {"name", "version", "model_file_digest"})
        for name in ("name", "version", "model_file_digest"):
            _require(isinstance(engine[name], str), "must be a string", f"predicate.engine.{name}", engine[name])
        _require(engine["model_file_digest"] == "" or bool(_DIGEST.fullmatch(engine["model_file_digest"])),
                 "must be sha256:<hex> or empty", "predicate.engine.model_file_digest", engine["model_file_digest"])
    node = _keys(p["node"], "predicate.node", {"key_id", "public_key"})
    _require(isinstance(node["public_key"], str) and bool(_HEX64.fullmatch(node["public_key"])),
             "must be 64 lowercase hex digits", "predicate.node.public_key", node["public_key"])
    _require(node["key_id"] == key_id_for(bytes.fromhex(node["public_key"])), "key id does not match public key",
             "predicate.node.key_id", node["key_id"], key_id_for(bytes.fromhex(node["public_key"])))
    _require(isinstance(p["evidence"], dict), "must be an object", "predicate.evidence")
    _require(isinstance(p["issued_at"], str) and bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
                                                                   p["issued_at"])),
             "must be an RFC 3339 UTC time", "predicate.issued_at", p["issued_at"])
    _require(isinstance(p["receipt_id"], str) and bool(_RID.fullmatch(p["receipt_id"])),
             "must be 32 lowercase hex digits", "predicate.receipt_id", p["receipt_id"])
    return st


#: Keys a receipt document may carry outside the signature, each binding the signed envelope
#: itself and verified by the plugin that claims it (a consensus quorum certificate).
ATTACHMENTS = frozenset({"consensus"})


def _parse_document(doc: Any) -> tuple[dsse.Envelope, dict[str, Any]]:
    if isinstance(doc, bytes | str):
        doc = loads_strict(doc, "receipt")
    _keys(doc, "receipt", {"receipt_id", "envelope", "log"}, ATTACHMENTS | {DISCLOSURE_KEY})
    _require(isinstance(doc["receipt_id"], str) and bool(_RID.fullmatch(doc["receipt_id"])),
             "must be 32 lowercase hex digits", "receipt.receipt_id", doc["receipt_id"])
    lg = _keys(doc["log"], "receipt.log", {"origin", "index", "tree_size", "inclusion_proof", "checkpoint"})
    _int(lg["index"], "receipt.log.index")
    _int(lg["tree_size"], "receipt.log.tree_size")
    _require(isinstance(lg["origin"], str), "must be a string", "receipt.log.origin")
    _require(isinstance(lg["checkpoint"], str), "must be a string", "receipt.log.checkpoint")
    proof = lg["inclusion_proof"]
    _require(isinstance(proof, list) and len(proof) <= 64, "must be a list of at most 64 hashes",
             "receipt.log.inclusion_proof")
    for i, h in enumerate(proof):
        _require(isinstance(h, str) and bool(_HEX64.fullmatch(h)), "must be 64 lowercase hex digits",
                 f"receipt.log.inclusion_proof[{i}]", h)
    try:
        envelope = dsse.parse_envelope(doc["envelope"])
    except ParseError as exc:
        raise ReceiptParseError(exc.message, field=exc.field, got=exc.got) from exc
    return envelope, doc


def is_sealed(statement: dict[str, Any]) -> bool:
    """True for statement format 2 (content digests salted, the rest sealed)."""
    return statement.get("predicateType") == PREDICATE_TYPE_V2


def disclosure_of(doc: Any, response: Any = None) -> Any:
    """The requester's disclosure: the receipt document's, else the one in the response's receipt."""
    if isinstance(doc, dict) and DISCLOSURE_KEY in doc:
        return doc[DISCLOSURE_KEY]
    sg = response.get(RESPONSE_EXCLUDED_KEY) if isinstance(response, dict) else None
    receipt = sg.get("receipt") if isinstance(sg, dict) else None
    return receipt.get(DISCLOSURE_KEY) if isinstance(receipt, dict) else None


def open_statement(statement: dict[str, Any], disclosure: Any) -> tuple[dict[str, Any], str | None]:
    """(the statement with its sealed part merged into the predicate, the receipt secret).

    Format 1 comes back as it is (secret None). Format 2 needs the requester's disclosure
    {"secret", "sealed"}: the sealed part must hash, under the secret, to the signed
    `sealed_digest`, and with the signed model digests to the signed `binding_digest`.
    """
    if not is_sealed(statement):
        return statement, None
    if disclosure is None:
        raise ReceiptSecretError("this receipt seals its content under the requester's receipt secret; give the "
                                 "requester's copy (the response's specguard.receipt, with its disclosure)",
                                 field="receipt.disclosure", got=None, expected="{secret, sealed}")
    d = _keys(disclosure, "receipt.disclosure", {"secret", "sealed"})
    _secret_bytes(d["secret"])
    sealed = _keys(d["sealed"], "receipt.disclosure.sealed", set(SEALED_FIELDS))
    check_sealed(sealed, "receipt.disclosure.sealed")
    predicate = statement["predicate"]
    try:
        got = sealed_digest(sealed, d["secret"])
        binding = "sha256:" + sha256_hex(canonical_json({
            "model_digest": predicate["model"]["digest"], "tokenizer_digest": predicate["model"]["tokenizer_digest"],
            "prompt_ids_digest": sealed["prompt_ids_digest"], "output_ids_digest": sealed["output_ids_digest"],
            "params": sealed["params"], "finish_reason": sealed["finish_reason"], "salt": d["secret"]}))
    except CanonicalizationError as exc:
        raise ReceiptParseError("disclosure is not canonicalizable", field="receipt.disclosure.sealed",
                                got=exc.message) from exc
    if got != predicate[SEALED_DIGEST_KEY]:
        raise ReceiptSecretError("the disclosure does not open the signed sealed digest (another secret, or "
                                 "altered fields)", field="predicate." + SEALED_DIGEST_KEY, got=got,
                                 expected=predicate[SEALED_DIGEST_KEY])
    if binding != predicate["binding_digest"]:
        raise ReceiptSecretError("the sealed part does not give the signed binding digest",
                                 field="predicate.binding_digest", got=binding, expected=predicate["binding_digest"])
    return {**statement, "predicate": {**predicate, **sealed}}, d["secret"]


def _tokens_from(response: Any, options: VerifyOptions) -> Any:
    """Token records to check against the signed root: options.tokens (records or a Transcript),
    else response["specguard"]["transcript"]["tokens"] or response["specguard"]["tokens"]."""
    src = options.tokens
    if isinstance(src, Transcript):
        return [t.to_json() for t in src.tokens]
    if src is not None:
        return list(src)
    if isinstance(response, dict) and isinstance(response.get(RESPONSE_EXCLUDED_KEY), dict):
        sg = response[RESPONSE_EXCLUDED_KEY]
        if isinstance(sg.get("transcript"), dict) and "tokens" in sg["transcript"]:
            return sg["transcript"]["tokens"]
        if "tokens" in sg:
            return sg["tokens"]
    return None


def _check_tokens(tokens: Any, predicate: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(tokens, list):
        raise TokenRootError("token records must be a list", field="tokens", got=type(tokens).__name__)
    records: list[TokenRecord] = []
    for i, t in enumerate(tokens):
        ok = isinstance(t, dict) and all(k in t for k in ("position", "token_id", "logprob"))
        ok = ok and all(isinstance(t[k], int) and not isinstance(t[k], bool) for k in ("position", "token_id"))
        ok = ok and isinstance(t["logprob"], int | float) and not isinstance(t["logprob"], bool)
        if not ok:
            raise TokenRootError("token record needs integer position/token_id and numeric logprob",
                                 field=f"tokens[{i}]", got=t)
        records.append(TokenRecord(position=t["position"], token_id=t["token_id"], logprob=float(t["logprob"])))
    try:
        root = token_records_root(records)
    except CanonicalizationError as exc:
        raise TokenRootError("token record is not canonicalizable", field="tokens", got=exc.message) from exc
    if root != predicate["token_records_root"]:
        raise TokenRootError("token records do not match the signed root", field="predicate.token_records_root",
                             got=root, expected=predicate["token_records_root"])
    ids = ids_digest([r.token_id for r in records])
    if ids != predicate["output_ids_digest"]:
        raise TokenRootError("token ids do not match the signed output ids digest",
                             field="predicate.output_ids_digest", got=ids, expected=predicate["output_ids_digest"])
    return {"layer": "token_records", "status": "ok", "detail": f"{len(records)} token records match the root"}


def _verify_log(envelope_obj: dict[str, Any], lg: dict[str, Any], public_key: bytes,
                saved: str | None, consistency: tuple[bytes, ...] | None) -> tuple[Checkpoint, list[dict[str, Any]]]:
    cp = verify_checkpoint(lg["checkpoint"], [public_key])
    if cp.origin != lg["origin"]:
        raise LogProofError("receipt log origin differs from its checkpoint", field="receipt.log.origin",
                            got=lg["origin"], expected=cp.origin)
    if cp.size != lg["tree_size"]:
        raise LogProofError("receipt tree size differs from its checkpoint", field="receipt.log.tree_size",
                            got=lg["tree_size"], expected=cp.size)
    leaf = merkle.leaf_hash(canonical_json(envelope_obj))
    merkle.verify_inclusion(lg["index"], cp.size, leaf, [bytes.fromhex(h) for h in lg["inclusion_proof"]], cp.root)
    layers = [{"layer": "log_inclusion", "status": "ok",
               "detail": f"entry {lg['index']} is in {cp.origin} at size {cp.size}"}]
    if saved is None:
        return cp, layers
    other = verify_checkpoint(saved, [public_key], origin=cp.origin)
    small, large = (other, cp) if other.size <= cp.size else (cp, other)
    detail = check_consistency(small, large, consistency)
    layers.append({"layer": "log_consistency", "status": "ok", "detail": detail})
    return cp, layers


def verify_receipt(
    receipt_doc: dict[str, Any] | bytes | str,
    options: VerifyOptions | None = None,
    *,
    evidence_verifier: EvidenceVerifier | None = None,
    trusted_keys: list[bytes] | None = None,
    response: dict[str, Any] | None = None,
    checkpoint: str | None = None,
) -> VerifiedReceipt:
    """Verify a receipt offline, layer by layer; raise the failing layer's error.

    `options` says what to check (see VerifyOptions); `trusted_keys`, `response` and
    `checkpoint` are shorthands that replace those fields. `evidence_verifier(slot, value,
    statement, options)` checks each evidence slot and attachment (None: no slot is verified, so
    every layer the options require fails). Every layer the options ask for is required.
    """
    options = options or VerifyOptions()
    shorthand = {k: v for k, v in (("trusted_keys", trusted_keys), ("response", response),
                                   ("checkpoint", checkpoint)) if v is not None}
    if shorthand:
        options = dataclasses.replace(options, **shorthand)
    layers: list[dict[str, Any]] = []

    # 1. Parse the receipt document and its DSSE envelope (structure only; nothing trusted yet).
    envelope, doc = _parse_document(receipt_doc)
    layers.append({"layer": "parse", "status": "ok", "detail": "receipt document and envelope well-formed"})

    # 2. Signature: against a pinned key; the key the statement names only if allowed.
    statement, key_id, public_key, pinned = _verify_signature(envelope, doc, options)
    detail = f"signed by pinned key {key_id}" if pinned else f"signature valid but key NOT pinned ({key_id})"
    layers.append({"layer": "signature", "status": "ok", "detail": detail, "key_pinned": pinned})

    # 2b. A format-2 statement's sealed content, opened with the requester's receipt secret.
    statement, secret, layer = _open_sealed(statement, doc, options)
    predicate = statement["predicate"]
    layers.append(layer)

    # 3. Digests of what the client sent and received; the parameters the request resolves to.
    layers.append(_check_response(options.response, statement, secret))
    if options.request is not None:
        layers.append(_check_request(options.request, predicate, secret))
        layers.append(_check_params(options, predicate))

    # 4. Token records root, when token records are available (options or the response).
    tokens = _tokens_from(options.response, options)
    if tokens is not None:
        layers.append(_check_tokens(tokens, predicate))
    else:
        layers.append({"layer": "token_records", "status": "unchecked", "detail": "no token records given"})

    # 5. The body's text against the decoding of the signed output ids (needs a decoder).
    if options.decoder is not None:
        layers.append(_check_text(options, predicate, tokens))

    # 6. Log inclusion against the receipt's checkpoint; consistency with a given checkpoint.
    cp, log_layers = _verify_log(doc["envelope"], doc["log"], public_key, options.checkpoint,
                                 options.consistency_proof)
    layers.extend(log_layers)

    # 7. Evidence slots, each through the evidence verifier.
    evidence_results = _verify_evidence(predicate["evidence"], statement, options, evidence_verifier)
    for slot, result in evidence_results.items():
        layers.append(_evidence_layer(f"evidence:{slot}", result))

    # 8. Attachments outside the signature (e.g. a quorum certificate): they bind the signed
    #    envelope's digest, so their verifier gets the envelope too.
    attached = {k: doc[k] for k in sorted(ATTACHMENTS) if k in doc}
    attached_results: dict[str, Any] = {}
    if attached:
        attached_results = _verify_evidence(attached, statement, dataclasses.replace(options, envelope=doc["envelope"]),
                                            evidence_verifier)
        for slot, result in attached_results.items():
            layers.append(_evidence_layer(f"attachment:{slot}", result))
        evidence_results.update({f"attachment:{k}": v for k, v in attached_results.items()})

    # 9. Every layer the user asked for must be present and verified, never "unchecked".
    _require_layers(options, attached_results | {
        k: v for k, v in evidence_results.items() if not k.startswith("attachment:")})

    return VerifiedReceipt(
        receipt_id=doc["receipt_id"], statement=statement, key_id=key_id, public_key=public_key,
        key_pinned=pinned, log_index=doc["log"]["index"], checkpoint=cp, layers=layers,
        evidence=evidence_results,
    )


def _verify_signature(envelope: dsse.Envelope, doc: dict[str, Any],
                      options: VerifyOptions) -> tuple[dict[str, Any], str, bytes, bool]:
    if options.trusted_keys:
        key_id = dsse.verify_envelope(envelope, list(options.trusted_keys))
        statement = parse_statement(envelope.payload)
        public_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
        if key_id_for(public_key) != key_id:
            raise SignatureError("statement names a different node key than the one that signed it",
                                 field="predicate.node.public_key", got=key_id_for(public_key), expected=key_id)
        pinned = True
    elif options.allow_unpinned:
        statement = parse_statement(envelope.payload)
        public_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
        key_id = dsse.verify_envelope(envelope, [public_key])
        pinned = False
        log.warning("receipt %s: signature valid but key not pinned (--allow-unpinned)", doc["receipt_id"])
    else:
        raise UnpinnedKeyError("no trusted node key given: a signature under the key the receipt names "
                               "proves nothing; pin the node key (--trusted-key) or pass --allow-unpinned",
                               field="trusted_keys", got=0, expected=">= 1 pinned key")
    if statement["predicate"]["receipt_id"] != doc["receipt_id"]:
        raise SignatureError("receipt_id outside the signature differs from the signed one",
                             field="receipt.receipt_id", got=doc["receipt_id"],
                             expected=statement["predicate"]["receipt_id"])
    return statement, key_id, public_key, pinned


def _open_sealed(statement: dict[str, Any], doc: dict[str, Any],
                 options: VerifyOptions) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Open a format-2 statement when the disclosure is at hand; a check that needs it fails without."""
    if not is_sealed(statement):
        return statement, None, {"layer": "sealed", "status": "ok",
                                 "detail": "statement format 1: content in clear (nothing sealed)"}
    disclosure = disclosure_of(doc, options.response)
    needs = [name for name, value in (("--response", options.response), ("--request", options.request),
                                      ("--transcript", options.tokens), ("--model", options.decoder))
             if value is not None]
    if disclosure is None and not needs:
        return statement, None, {"layer": "sealed", "status": "unchecked",
                                 "detail": "content sealed under the requester's receipt secret (not given)"}
    if disclosure is None:
        raise ReceiptSecretError(f"{', '.join(needs)} check(s) the content this receipt seals: give the requester's "
                                 "receipt (the response's specguard.receipt, with its disclosure)",
                                 field="receipt.disclosure", got=None, expected="{secret, sealed}")
    opened, secret = open_statement(statement, disclosure)
    return opened, secret, {"layer": "sealed", "status": "ok",
                            "detail": "sealed content opened with the receipt secret"}


def _check_response(response: Any, statement: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    """Subject digest against the response the client received (minus its "specguard" key)."""
    if response is None:
        return {"layer": "response", "status": "unchecked", "detail": "no response given"}
    subject = statement["subject"][0]["digest"]["sha256"]
    version = statement["predicate"].get(RESPONSE_DIGEST_KEY, RESPONSE_DIGEST_V1)
    got = response_digest(dict(response) if not isinstance(response, dict) else response, version, secret)
    if got != subject:
        raise SubjectDigestError("response does not match the signed subject digest",
                                 field="statement.subject[0].digest.sha256", got=got, expected=subject)
    return {"layer": "response", "status": "ok", "detail": f"response digest ({version}) matches the subject"}


def _check_request(request: Any, predicate: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    """The signed request digest against the canonical request object the user gives."""
    got = request_digest(request, secret)
    if got != predicate["request_digest"]:
        raise RequestDigestError("request is not the one the receipt signs (prompt or parameters differ)",
                                 field="predicate.request_digest", got=got, expected=predicate["request_digest"])
    return {"layer": "request", "status": "ok", "detail": "request digest matches the signed one"}


def _prompt_ids(options: VerifyOptions) -> list[int] | None:
    if options.prompt_ids is not None:
        return list(options.prompt_ids)
    sg = options.response.get(RESPONSE_EXCLUDED_KEY) if isinstance(options.response, dict) else None
    ids = sg.get("prompt_ids") if isinstance(sg, dict) else None
    return ids if isinstance(ids, list) else None


def _check_params(options: VerifyOptions, predicate: dict[str, Any]) -> dict[str, Any]:
    """The signed parameters are what the request resolves to (attest/request_defaults.py), under the
    node's signed defaults and the defaults the user expects (`options.expected_defaults`)."""
    ids = _prompt_ids(options)
    if ids is not None:
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids):
            raise RequestDigestError("prompt ids must be non-negative integers", field="specguard.prompt_ids")
        if ids_digest(ids) != predicate["prompt_ids_digest"]:
            where = "the request through the model's tokenizer and template" if options.prompt_ids is not None \
                else "the response's specguard.prompt_ids"
            raise RequestDigestError(f"{where} gives other prompt ids than the receipt signs",
                                     field="predicate.prompt_ids_digest", got=ids_digest(ids),
                                     expected=predicate["prompt_ids_digest"])
    signed = RequestDefaults.from_json(predicate[DEFAULTS_KEY]) if DEFAULTS_KEY in predicate else None
    expected = options.expected_defaults or ExpectedDefaults()
    detail = check_params(predicate["params"], dict(options.request), None if ids is None else len(ids), signed,
                          expected)
    return {"layer": "params", "status": "ok", "detail": detail}


def _output_ids(response: Any, tokens: Any) -> list[int] | None:
    sg = response.get(RESPONSE_EXCLUDED_KEY) if isinstance(response, dict) else None
    if isinstance(sg, dict) and isinstance(sg.get("output_ids"), list):
        return sg["output_ids"]
    if isinstance(tokens, list) and all(isinstance(t, dict) and "token_id" in t for t in tokens):
        return [t["token_id"] for t in tokens]
    return None


#: the finish reason a client body shows for each signed one; anything else is never honest
BODY_FINISH_REASON = {"stop": "stop", "length": "length"}


def _check_text(options: VerifyOptions, predicate: dict[str, Any], tokens: Any) -> dict[str, Any]:
    """decode(signed output ids), stop strings trimmed, must be the body's text; finish reason honest."""
    decoder, response = options.decoder, options.response
    if not isinstance(response, dict):
        raise ResponseTextError("checking the response text needs the response (--response)", field="response")
    signed_tok = predicate["model"].get("tokenizer_digest")
    if decoder.tokenizer_digest != signed_tok:
        raise ResponseTextError("the given model's tokenizer is not the one the receipt signs",
                                field="predicate.model.tokenizer_digest", got=decoder.tokenizer_digest,
                                expected=signed_tok)
    ids = _output_ids(response, tokens)
    if ids is None:
        raise ResponseTextError("no output ids to decode: the response has no specguard.output_ids and no "
                                "token records were given", field="specguard.output_ids")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids):
        raise ResponseTextError("output ids must be non-negative integers", field="specguard.output_ids")
    if ids_digest(ids) != predicate["output_ids_digest"]:
        raise TokenRootError("output ids do not match the signed output ids digest",
                             field="predicate.output_ids_digest", got=ids_digest(ids),
                             expected=predicate["output_ids_digest"])
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise ResponseTextError("response must have exactly one choice", field="choices",
                                got=len(choices) if isinstance(choices, list) else type(choices).__name__)
    choice = choices[0]
    message = choice.get("message")
    body_text = message.get("content") if isinstance(message, dict) else choice.get("text")
    expected = decoder.decode(list(ids))
    stops = predicate["params"].get("stop") or []
    if predicate["finish_reason"] == "stop" and stops:
        cut = min((expected.find(s) for s in stops if isinstance(s, str) and s and s in expected), default=-1)
        expected = expected if cut < 0 else expected[:cut]
    if body_text != expected:
        raise ResponseTextError("response text is not the decoding of the signed output ids",
                                field="choices[0].text" if message is None else "choices[0].message.content",
                                got=body_text if not isinstance(body_text, str) else body_text[:200],
                                expected=expected[:200])
    honest = BODY_FINISH_REASON.get(predicate["finish_reason"])
    if honest is None or choice.get("finish_reason") != honest:
        raise ResponseTextError("response finish reason is not the signed one", field="choices[0].finish_reason",
                                got=choice.get("finish_reason"),
                                expected=honest or f"a finished generation (signed: {predicate['finish_reason']})")
    return {"layer": "response_text", "status": "ok",
            "detail": f"text is the decoding of {len(ids)} signed output ids; finish reason {honest}"}


def _evidence_layer(name: str, result: Any) -> dict[str, Any]:
    """A layer entry for one evidence result: "unchecked" when no verifier claimed the slot or the
    verifier says it could not check it (e.g. no evidence file given), never a silent "ok"."""
    if result == "unchecked":
        return {"layer": name, "status": "unchecked", "detail": "no verifier for this slot"}
    if isinstance(result, dict) and result.get("checked") is False:
        return {"layer": name, "status": "unchecked", "detail": str(result.get("reason") or "not checked")}
    return {"layer": name, "status": "ok", "detail": "verified"}


def _require_layers(options: VerifyOptions, results: dict[str, Any]) -> None:
    """Each slot the options require must be in the receipt and verified by a verifier."""
    for slot, asked_by in sorted(options.required_slots().items()):
        if slot not in results:
            raise MissingEvidenceError(f"{asked_by} requires the {slot!r} layer, but the receipt has none",
                                       field=f"evidence.{slot}" if slot != "consensus" else "receipt.consensus",
                                       got=sorted(results) or None, expected=slot)
        result = results[slot]
        if result == "unchecked" or (isinstance(result, dict) and result.get("checked") is False):
            reason = result.get("reason") if isinstance(result, dict) else "no verifier claims this slot"
            raise MissingEvidenceError(f"{asked_by} requires the {slot!r} layer, but it was not verified: {reason}",
                                       field=f"evidence.{slot}", got="unchecked", expected="verified")


def _verify_evidence(evidence: dict[str, Any], statement: dict[str, Any], options: VerifyOptions,
                     verifier: EvidenceVerifier | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for slot in sorted(evidence):
        if verifier is None:
            results[slot] = "unchecked"
            continue
        try:
            result = verifier(slot, evidence[slot], statement, options)
        except ValidationError:
            raise
        except VerificationError as exc:
            if type(exc).exit_code == VerificationError.exit_code:
                raise EvidenceError(f"evidence slot {slot!r}: {exc.message}", field=exc.field or f"evidence.{slot}",
                                    got=exc.got, expected=exc.expected) from exc
            raise
        except SpecguardError:
            raise
        except Exception as exc:  # a plugin bug must not pass as success
            raise EvidenceError(f"evidence slot {slot!r}: verifier crashed ({type(exc).__name__}: {exc})",
                                field=f"evidence.{slot}") from exc
        results[slot] = "unchecked" if result is None else result
    return results


def load_json_file(path: Path, what: str) -> Any:
    """Read a JSON file strictly (ReceiptParseError on unreadable or bad bytes)."""
    return jsonio.load_json_file(path, what, ReceiptParseError)


__all__ += ["CheckpointParseError", "receipt_document", "parse_statement", "loads_strict", "load_json_file",
            "ReceiptSecretError", "open_statement", "disclosure_of", "is_sealed", "new_receipt_secret",
            "request_digest", "sealed_digest", "sealed_part", "PREDICATE_TYPE_V2", "DISCLOSURE_KEY"]
