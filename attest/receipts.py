"""Receipts: a signed in-toto Statement per response, logged in the node's transparency log.

A receipt document is
    {"receipt_id": <uuid4 hex>,
     "envelope": <DSSE envelope over the canonical JSON of the in-toto Statement>,
     "log": {"origin", "index", "tree_size", "inclusion_proof": [hex...], "checkpoint": <signed note>}}
The statement is signed; the "log" part cannot be (the signature is what gets logged) but is
itself verifiable: the inclusion proof leads from the envelope's leaf hash to the root of a
checkpoint signed by the same node key. `verify_receipt` walks every layer and raises one
error class per layer (exit codes: parse 3, signature 10, response digest 11, token records
12, log 13, evidence 14). The full format is documented in docs/receipts.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..canonical import CanonicalizationError, canonical_json, json_digest, sha256_hex
from ..errors import ParseError, SpecguardError, ValidationError, VerificationError
from ..keys import NodeKey, key_id_for
from ..transcript import LOGPROB_DECIMALS, TokenRecord, Transcript, ids_digest
from . import dsse, merkle
from .checkpoint import Checkpoint, CheckpointParseError, verify_checkpoint
from .disclosure import token_records_root
from .dsse import SignatureError
from .merkle import LogProofError
from .tlog import LOG_FILE, Appended, TransparencyLog

log = logging.getLogger("specguard.receipts")

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://specguard.dev/receipt/v1"
SUBJECT_NAME = "response"
RESPONSE_EXCLUDED_KEY = "specguard"

__all__ = [
    "ReceiptIssuer", "VerifiedReceipt", "verify_receipt", "build_statement", "response_digest",
    "token_records_root", "default_origin", "ReceiptParseError", "SignatureError",
    "SubjectDigestError", "TokenRootError", "LogProofError", "EvidenceError",
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


# --- building ---------------------------------------------------------------------------------


def response_digest(response_obj: dict[str, Any]) -> str:
    """Hex SHA-256 of the RFC 8785 JSON of the response body without its top-level "specguard" key.

    The "specguard" key carries the receipt itself (and other evidence), which cannot be part
    of what it signs; everything else the client received is covered.
    """
    if not isinstance(response_obj, dict):
        raise ReceiptParseError("response must be a JSON object", field="response",
                                got=type(response_obj).__name__)
    body = {k: v for k, v in response_obj.items() if k != RESPONSE_EXCLUDED_KEY}
    return sha256_hex(canonical_json(body))


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
) -> dict[str, Any]:
    """The in-toto Statement v1 for one response (see docs/receipts.md for every field)."""
    predicate = {
        "binding_digest": transcript.binding_digest(),
        "model": {
            "name": transcript.model_name,
            "digest": transcript.model_digest,
            "tokenizer_digest": transcript.tokenizer_digest,
        },
        "request_digest": json_digest(request_obj),
        "prompt_ids_digest": ids_digest(transcript.prompt_ids),
        "output_ids_digest": ids_digest(transcript.output_ids),
        "token_records_root": token_records_root(list(transcript.tokens)),
        "token_records_count": len(transcript.tokens),
        "logprob_decimals": LOGPROB_DECIMALS,
        "params": transcript.params.to_json(),
        "finish_reason": transcript.finish_reason,
        "drafter": _drafter_stats(transcript),
        "policy": {"name": getattr(policy, "name", None), "digest": getattr(policy, "digest", None)},
        "node": {"key_id": key.key_id, "public_key": key.public_hex},
        "evidence": dict(evidence or {}),
        "issued_at": issued_at or _utc_now(),
        "receipt_id": receipt_id or uuid.uuid4().hex,
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": SUBJECT_NAME, "digest": {"sha256": response_digest(response_obj)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
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
              evidence: dict[str, Any], policy: Any, *, receipt_id: str | None = None) -> dict[str, Any]:
        """Build, sign and log one receipt; return the receipt document once it is durable.

        `receipt_id` is the id chosen before sealing (evidence may bind it); a fresh one if None."""
        statement = build_statement(transcript, request_obj, response_obj, evidence, policy, self.key,
                                    receipt_id=receipt_id)
        envelope = dsse.sign_envelope(canonical_json(statement), self.key)
        receipt_id = statement["predicate"]["receipt_id"]
        out: dict[str, Any] = {}

        def attach(appended: Appended) -> tuple[str, bytes]:
            out.update(receipt_document(receipt_id, envelope, self.origin, appended))
            return receipt_id, canonical_json(out)

        self.log.append(canonical_json(envelope), attach)
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
    """JSON without duplicate keys, NaN or Infinity; any failure is a typed ParseError."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise error("duplicate key in JSON object", field=f"{what}.{k}")
            out[k] = v
        return out

    def no_constants(name: str) -> Any:
        raise error("NaN/Infinity are not JSON", field=what, got=name)

    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constants)
    except UnicodeDecodeError as exc:
        raise error("not UTF-8", field=what, offset=exc.start) from exc
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc.msg}", field=what, offset=exc.pos) from exc
    except RecursionError as exc:
        raise error("JSON nested too deeply", field=what) from exc


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
    _require(st["predicateType"] == PREDICATE_TYPE, "unexpected predicate type", "statement.predicateType",
             st["predicateType"], PREDICATE_TYPE)
    subj = st["subject"]
    _require(isinstance(subj, list) and len(subj) == 1, "exactly one subject expected", "statement.subject")
    _keys(subj[0], "statement.subject[0]", {"name", "digest"})
    _require(subj[0]["name"] == SUBJECT_NAME, "subject name", "statement.subject[0].name", subj[0]["name"],
             SUBJECT_NAME)
    _keys(subj[0]["digest"], "statement.subject[0].digest", {"sha256"})
    _require(isinstance(subj[0]["digest"]["sha256"], str) and bool(_HEX64.fullmatch(subj[0]["digest"]["sha256"])),
             "subject digest must be 64 lowercase hex digits", "statement.subject[0].digest.sha256")
    p = _keys(st["predicate"], "predicate", _PREDICATE_KEYS)
    for name in ("binding_digest", "request_digest", "prompt_ids_digest", "output_ids_digest"):
        _require(isinstance(p[name], str) and bool(_DIGEST.fullmatch(p[name])), "must be sha256:<hex>",
                 f"predicate.{name}", p[name])
    _require(isinstance(p["token_records_root"], str) and bool(_HEX64.fullmatch(p["token_records_root"])),
             "must be 64 lowercase hex digits", "predicate.token_records_root", p["token_records_root"])
    _int(p["token_records_count"], "predicate.token_records_count")
    _require(p["logprob_decimals"] == LOGPROB_DECIMALS, "unsupported logprob precision",
             "predicate.logprob_decimals", p["logprob_decimals"], LOGPROB_DECIMALS)
    _keys(p["model"], "predicate.model", {"name", "digest", "tokenizer_digest"})
    _require(isinstance(p["params"], dict), "must be an object", "predicate.params")
    _keys(p["drafter"], "predicate.drafter", {"name", "trusted", "drafted_tokens", "accepted_tokens",
                                              "acceptance_rate", "mean_accepted_tokens", "steps"})
    _keys(p["policy"], "predicate.policy", {"name", "digest"})
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
    _keys(doc, "receipt", {"receipt_id", "envelope", "log"}, ATTACHMENTS)
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


def _tokens_from(response: dict[str, Any] | None, options: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Token records to check against the signed root: options["tokens"] (records or a Transcript),
    else response["specguard"]["transcript"]["tokens"] or response["specguard"]["tokens"]."""
    src = options.get("tokens")
    if isinstance(src, Transcript):
        return [t.to_json() for t in src.tokens]
    if src is not None:
        return src
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
                saved: str | None, consistency: list[bytes] | None) -> tuple[Checkpoint, list[dict[str, Any]]]:
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
    if other.size == cp.size:
        if other.root != cp.root:
            raise LogProofError("two checkpoints of the same size disagree (split view)",
                                field="checkpoint.root", got=other.root.hex(), expected=cp.root.hex())
        detail = "equal to the given checkpoint"
    else:
        if consistency is None:
            raise LogProofError("checkpoint sizes differ and no consistency proof was given",
                                field="consistency_proof", got=None,
                                expected=f"proof between sizes {min(other.size, cp.size)} and {max(other.size, cp.size)}")
        small, large = (other, cp) if other.size < cp.size else (cp, other)
        merkle.verify_consistency(small.size, large.size, small.root, large.root, consistency)
        detail = f"consistent with the given checkpoint (size {other.size})"
    layers.append({"layer": "log_consistency", "status": "ok", "detail": detail})
    return cp, layers


def verify_receipt(
    receipt_doc: dict[str, Any] | bytes | str,
    *,
    trusted_keys: list[bytes] | None = None,
    response: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    options: dict[str, Any] | None = None,
) -> VerifiedReceipt:
    """Verify a receipt offline, layer by layer; raise the failing layer's error.

    options: "tokens" (token records or a Transcript to check against the signed root),
    "consistency_proof" (list of 32-byte hashes between the receipt's checkpoint and `checkpoint`),
    and whatever evidence plugins read ("policy", "attestation_evidence", "model_commitment",
    "verifier_keys", "trusted_keys").
    """
    options = dict(options or {})
    options.setdefault("trusted_keys", list(trusted_keys or []))
    layers: list[dict[str, Any]] = []

    # 1. Parse the receipt document and its DSSE envelope (structure only; nothing trusted yet).
    envelope, doc = _parse_document(receipt_doc)
    layers.append({"layer": "parse", "status": "ok", "detail": "receipt document and envelope well-formed"})

    # 2. Signature: against a pinned key if given, else against the key the statement names.
    if trusted_keys:
        for k in trusted_keys:
            if not isinstance(k, bytes) or len(k) != 32:
                raise SignatureError("trusted key must be 32 raw bytes", field="trusted_keys", got=k)
        key_id = dsse.verify_envelope(envelope, list(trusted_keys))
        statement = parse_statement(envelope.payload)
        public_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
        if key_id_for(public_key) != key_id:
            raise SignatureError("statement names a different node key than the one that signed it",
                                 field="predicate.node.public_key", got=key_id_for(public_key), expected=key_id)
        pinned, sig_detail = True, f"signed by pinned key {key_id}"
    else:
        statement = parse_statement(envelope.payload)
        public_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
        key_id = dsse.verify_envelope(envelope, [public_key])
        pinned, sig_detail = False, f"signature valid but key not pinned ({key_id})"
        log.warning("receipt %s: signature valid but key not pinned; pass --trusted-key", doc["receipt_id"])
    predicate = statement["predicate"]
    if predicate["receipt_id"] != doc["receipt_id"]:
        raise SignatureError("receipt_id outside the signature differs from the signed one",
                             field="receipt.receipt_id", got=doc["receipt_id"], expected=predicate["receipt_id"])
    layers.append({"layer": "signature", "status": "ok", "detail": sig_detail, "key_pinned": pinned})

    # 3. Subject digest against the response the client received (minus its "specguard" key).
    subject = statement["subject"][0]["digest"]["sha256"]
    if response is not None:
        got = response_digest(response)
        if got != subject:
            raise SubjectDigestError("response does not match the signed subject digest",
                                     field="statement.subject[0].digest.sha256", got=got, expected=subject)
        layers.append({"layer": "response", "status": "ok", "detail": "response digest matches the subject"})
    else:
        layers.append({"layer": "response", "status": "unchecked", "detail": "no response given"})

    # 4. Token records root, when token records are available (options or the response).
    tokens = _tokens_from(response, options)
    if tokens is not None:
        layers.append(_check_tokens(tokens, predicate))
    else:
        layers.append({"layer": "token_records", "status": "unchecked", "detail": "no token records given"})

    # 5. Log inclusion against the receipt's checkpoint; consistency with a given checkpoint.
    consistency = options.get("consistency_proof")
    cp, log_layers = _verify_log(doc["envelope"], doc["log"], public_key, checkpoint, consistency)
    layers.extend(log_layers)

    # 6. Evidence slots, each through the plugin that claims it.
    evidence_results = _verify_evidence(predicate["evidence"], statement, options)
    for slot, result in evidence_results.items():
        layers.append(_evidence_layer(f"evidence:{slot}", result))

    # 7. Attachments outside the signature (e.g. a quorum certificate): they bind the signed
    #    envelope's digest, so the plugin that claims them gets the envelope too.
    attached = {k: doc[k] for k in sorted(ATTACHMENTS) if k in doc}
    if attached:
        attached_results = _verify_evidence(attached, statement, {**options, "envelope": doc["envelope"]})
        for slot, result in attached_results.items():
            layers.append(_evidence_layer(f"attachment:{slot}", result))
        evidence_results.update({f"attachment:{k}": v for k, v in attached_results.items()})

    return VerifiedReceipt(
        receipt_id=doc["receipt_id"], statement=statement, key_id=key_id, public_key=public_key,
        key_pinned=pinned, log_index=doc["log"]["index"], checkpoint=cp, layers=layers,
        evidence=evidence_results,
    )


def _evidence_layer(name: str, result: Any) -> dict[str, Any]:
    """A layer entry for one evidence result: "unchecked" when no plugin claimed the slot or the
    plugin says it could not check it (e.g. no evidence file given), never a silent "ok"."""
    if result == "unchecked":
        return {"layer": name, "status": "unchecked", "detail": "no plugin verifies this slot"}
    if isinstance(result, dict) and result.get("checked") is False:
        return {"layer": name, "status": "unchecked", "detail": str(result.get("reason") or "not checked")}
    return {"layer": name, "status": "ok", "detail": "verified"}


def _verify_evidence(evidence: dict[str, Any], statement: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from ..plugin_manager import load_plugins

    pm = load_plugins()
    results: dict[str, Any] = {}
    for slot in sorted(evidence):
        try:
            result = pm.hook.verify_evidence(slot=slot, value=evidence[slot], statement=statement, options=options)
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
    """Read a JSON file strictly (ParseError on bad bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ReceiptParseError(f"cannot read {what}: {exc.strerror}", field=str(path)) from exc
    return loads_strict(data, what)


__all__ += ["CheckpointParseError", "receipt_document", "parse_statement", "loads_strict", "load_json_file"]
