"""Reading receipts: the document, its envelope and the signed statement, checked field by field.

Structure only (nothing here trusts a signature): every failure is a ReceiptParseError (exit
code 3) naming the field. JSON is read by the one strict loader (`specguard.attest.jsonio`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...canonical import CanonicalizationError, canonical_json
from ...errors import ParseError
from ...keys import key_id_for
from ...transcript import LOGPROB_DECIMALS
from .. import dsse, jsonio
from ..request_defaults import DEFAULTS_KEY, RequestDefaults
from .errors import ReceiptParseError
from .wire import (
    DIGEST_RE,
    DISCLOSURE_KEY,
    ENGINE_KEY,
    HEX64_RE,
    PREDICATE_TYPE,
    PREDICATE_TYPES,
    RECEIPT_ID_RE,
    RESPONSE_DIGEST_KEY,
    RESPONSE_DIGEST_V1,
    RESPONSE_DIGEST_V2,
    RESPONSE_DIGEST_V3,
    SEALED_DIGEST_KEY,
    SEALED_FIELDS,
    STATEMENT_TYPE,
    SUBJECT_NAME,
)

#: the structure checks of this format, failing with ReceiptParseError
require = jsonio.Require(ReceiptParseError)

#: Keys a receipt document may carry outside the signature, each binding the signed envelope
#: itself and verified by the plugin that claims it (a consensus quorum certificate).
ATTACHMENTS = frozenset({"consensus"})


def loads_strict(data: bytes | str, what: str, error: type[ParseError] = ReceiptParseError) -> Any:
    """`specguard.attest.jsonio.loads_strict`, failing with ReceiptParseError by default."""
    return jsonio.loads_strict(data, what, error)


def load_json_file(path: Path, what: str) -> Any:
    """Read a JSON file strictly (ReceiptParseError on unreadable or bad bytes)."""
    return jsonio.load_json_file(path, what, ReceiptParseError)


_PREDICATE_KEYS = {
    "binding_digest", "model", "request_digest", "prompt_ids_digest", "output_ids_digest",
    "token_records_root", "token_records_count", "logprob_decimals", "params", "finish_reason",
    "drafter", "policy", "node", "evidence", "issued_at", "receipt_id",
}


_PUBLIC_KEYS_V2 = (_PREDICATE_KEYS - set(SEALED_FIELDS)) | {SEALED_DIGEST_KEY, RESPONSE_DIGEST_KEY, ENGINE_KEY}


def _check_predicate_keys(predicate_type: str, predicate: Any) -> dict[str, Any]:
    """Exact key sets: format 1 (everything in clear) or format 2 (salted digests + sealed digest)."""
    if predicate_type == PREDICATE_TYPE:
        p = require.keys(predicate, "predicate", _PREDICATE_KEYS,
                         frozenset({RESPONSE_DIGEST_KEY, ENGINE_KEY, DEFAULTS_KEY}))
        formats: tuple[str, ...] = (RESPONSE_DIGEST_V1, RESPONSE_DIGEST_V2)
    else:
        p = require.keys(predicate, "predicate", _PUBLIC_KEYS_V2, frozenset({DEFAULTS_KEY}))
        formats = (RESPONSE_DIGEST_V3,)
    require(p.get(RESPONSE_DIGEST_KEY, RESPONSE_DIGEST_V1) in formats, "unknown response digest format",
            f"predicate.{RESPONSE_DIGEST_KEY}", p.get(RESPONSE_DIGEST_KEY), list(formats))
    return p


def check_sealed(p: dict[str, Any], where: str) -> None:
    """The fields a format-2 statement seals (in a format-1 predicate or a disclosure's `sealed`)."""
    for name in ("prompt_ids_digest", "output_ids_digest"):
        require(isinstance(p[name], str) and bool(DIGEST_RE.fullmatch(p[name])), "must be sha256:<hex>",
                f"{where}.{name}", p[name])
    require(isinstance(p["token_records_root"], str) and bool(HEX64_RE.fullmatch(p["token_records_root"])),
            "must be 64 lowercase hex digits", f"{where}.token_records_root", p["token_records_root"])
    require.uint(p["token_records_count"], f"{where}.token_records_count")
    require(isinstance(p["params"], dict), "must be an object", f"{where}.params")
    require(isinstance(p["finish_reason"], str), "must be a string", f"{where}.finish_reason", p["finish_reason"])
    require.keys(p["drafter"], f"{where}.drafter", {"name", "trusted", "drafted_tokens", "accepted_tokens",
                                                     "acceptance_rate", "mean_accepted_tokens", "steps"})


def parse_statement(payload: bytes) -> dict[str, Any]:
    """Parse the signed payload: canonical JSON of an in-toto Statement with our predicate."""
    st = loads_strict(payload, "statement")
    try:
        canonical = canonical_json(st)
    except CanonicalizationError as exc:
        raise ReceiptParseError("statement is not canonicalizable", field="statement") from exc
    require(canonical == payload, "signed payload is not RFC 8785 canonical JSON", "envelope.payload")
    require.keys(st, "statement", {"_type", "subject", "predicateType", "predicate"})
    require(st["_type"] == STATEMENT_TYPE, "unexpected statement type", "statement._type", st["_type"],
            STATEMENT_TYPE)
    require(st["predicateType"] in PREDICATE_TYPES, "unexpected predicate type", "statement.predicateType",
            st["predicateType"], list(PREDICATE_TYPES))
    subj = st["subject"]
    require(isinstance(subj, list) and len(subj) == 1, "exactly one subject expected", "statement.subject")
    require.keys(subj[0], "statement.subject[0]", {"name", "digest"})
    require(subj[0]["name"] == SUBJECT_NAME, "subject name", "statement.subject[0].name", subj[0]["name"],
            SUBJECT_NAME)
    require.keys(subj[0]["digest"], "statement.subject[0].digest", {"sha256"})
    require(isinstance(subj[0]["digest"]["sha256"], str) and bool(HEX64_RE.fullmatch(subj[0]["digest"]["sha256"])),
            "subject digest must be 64 lowercase hex digits", "statement.subject[0].digest.sha256")
    p = _check_predicate_keys(st["predicateType"], st["predicate"])
    for name in ("binding_digest", "request_digest"):
        require(isinstance(p[name], str) and bool(DIGEST_RE.fullmatch(p[name])), "must be sha256:<hex>",
                f"predicate.{name}", p[name])
    require(p["logprob_decimals"] == LOGPROB_DECIMALS, "unsupported logprob precision",
            "predicate.logprob_decimals", p["logprob_decimals"], LOGPROB_DECIMALS)
    require.keys(p["model"], "predicate.model", {"name", "digest", "tokenizer_digest"})
    if st["predicateType"] == PREDICATE_TYPE:
        check_sealed(p, "predicate")
    else:
        require(isinstance(p[SEALED_DIGEST_KEY], str) and bool(DIGEST_RE.fullmatch(p[SEALED_DIGEST_KEY])),
                "must be sha256:<hex>", f"predicate.{SEALED_DIGEST_KEY}", p[SEALED_DIGEST_KEY])
    if DEFAULTS_KEY in p:
        RequestDefaults.from_json(p[DEFAULTS_KEY])
    require.keys(p["policy"], "predicate.policy", {"name", "digest"})
    if ENGINE_KEY in p:
        engine = require.keys(p[ENGINE_KEY], "predicate.engine", {"name", "version", "model_file_digest"})
        for name in ("name", "version", "model_file_digest"):
            require(isinstance(engine[name], str), "must be a string", f"predicate.engine.{name}", engine[name])
        require(engine["model_file_digest"] == "" or bool(DIGEST_RE.fullmatch(engine["model_file_digest"])),
                "must be sha256:<hex> or empty", "predicate.engine.model_file_digest", engine["model_file_digest"])
    node = require.keys(p["node"], "predicate.node", {"key_id", "public_key"})
    require(isinstance(node["public_key"], str) and bool(HEX64_RE.fullmatch(node["public_key"])),
            "must be 64 lowercase hex digits", "predicate.node.public_key", node["public_key"])
    require(node["key_id"] == key_id_for(bytes.fromhex(node["public_key"])), "key id does not match public key",
            "predicate.node.key_id", node["key_id"], key_id_for(bytes.fromhex(node["public_key"])))
    require(isinstance(p["evidence"], dict), "must be an object", "predicate.evidence")
    require(isinstance(p["issued_at"], str) and bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
                                                                   p["issued_at"])),
            "must be an RFC 3339 UTC time", "predicate.issued_at", p["issued_at"])
    require(isinstance(p["receipt_id"], str) and bool(RECEIPT_ID_RE.fullmatch(p["receipt_id"])),
            "must be 32 lowercase hex digits", "predicate.receipt_id", p["receipt_id"])
    return st




def parse_document(doc: Any) -> tuple[dsse.Envelope, dict[str, Any]]:
    """The receipt document (parsed from bytes or text when needed) and its DSSE envelope, structure only."""
    if isinstance(doc, bytes | str):
        doc = loads_strict(doc, "receipt")
    require.keys(doc, "receipt", {"receipt_id", "envelope", "log"}, ATTACHMENTS | {DISCLOSURE_KEY})
    require(isinstance(doc["receipt_id"], str) and bool(RECEIPT_ID_RE.fullmatch(doc["receipt_id"])),
            "must be 32 lowercase hex digits", "receipt.receipt_id", doc["receipt_id"])
    lg = require.keys(doc["log"], "receipt.log", {"origin", "index", "tree_size", "inclusion_proof", "checkpoint"})
    require.uint(lg["index"], "receipt.log.index")
    require.uint(lg["tree_size"], "receipt.log.tree_size")
    require(isinstance(lg["origin"], str), "must be a string", "receipt.log.origin")
    require(isinstance(lg["checkpoint"], str), "must be a string", "receipt.log.checkpoint")
    proof = lg["inclusion_proof"]
    require(isinstance(proof, list) and len(proof) <= 64, "must be a list of at most 64 hashes",
            "receipt.log.inclusion_proof")
    for i, h in enumerate(proof):
        require(isinstance(h, str) and bool(HEX64_RE.fullmatch(h)), "must be 64 lowercase hex digits",
                f"receipt.log.inclusion_proof[{i}]", h)
    try:
        envelope = dsse.parse_envelope(doc["envelope"])
    except ParseError as exc:
        raise ReceiptParseError(exc.message, field=exc.field, got=exc.got) from exc
    return envelope, doc

