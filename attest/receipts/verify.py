"""`verify_receipt`: a receipt checked offline, layer by layer, each layer failing with its own error.

Signature → sealed content → request/response digests and parameters → token records → response
text → log inclusion (and consistency) → evidence slots and attachments. What to check comes as
one `VerifyOptions`; every layer the options ask for is required.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from ...canonical import canonical_json
from ...keys import key_id_for
from .. import dsse, merkle
from ..checkpoint import Checkpoint, check_consistency, verify_checkpoint
from ..dsse import SignatureError
from ..merkle import LogProofError
from ..options import EvidenceVerifier, VerifyOptions
from .checks import check_request, check_response, check_signed_params, check_text, check_tokens, tokens_from
from .errors import ReceiptSecretError, UnpinnedKeyError
from .evidence import check_evidence
from .parse import ATTACHMENTS, parse_document, parse_statement
from .sealed import disclosure_of, is_sealed, open_statement

log = logging.getLogger("specguard.receipts")


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
    envelope, doc = parse_document(receipt_doc)
    layers.append({"layer": "parse", "status": "ok", "detail": "receipt document and envelope well-formed"})

    # 2. Signature: against a pinned key; the key the statement names only if allowed.
    statement, key_id, public_key, pinned = _verify_signature(envelope, doc, options)
    detail = f"signed by pinned key {key_id}" if pinned else f"signature valid but key NOT pinned ({key_id})"
    layers.append({"layer": "signature", "status": "ok", "detail": detail, "key_pinned": pinned})

    # 2b. A format-2 statement's sealed content, opened with the requester's receipt secret.
    statement, secret, layer = _open_sealed(statement, doc, options)
    layers.append(layer)

    # 3.-5. What the client sent and received, the token records and the text, against what is signed.
    layers.extend(_content_layers(statement, options, secret))

    # 6. Log inclusion against the receipt's checkpoint; consistency with a given checkpoint.
    cp, log_layers = _verify_log(doc["envelope"], doc["log"], public_key, options.checkpoint,
                                 options.consistency_proof)
    layers.extend(log_layers)

    # 7.-9. Evidence slots and attachments through the evidence verifier; every required layer verified.
    evidence_layers, evidence_results = check_evidence(doc, statement, options, evidence_verifier, ATTACHMENTS)
    layers.extend(evidence_layers)

    return VerifiedReceipt(
        receipt_id=doc["receipt_id"], statement=statement, key_id=key_id, public_key=public_key,
        key_pinned=pinned, log_index=doc["log"]["index"], checkpoint=cp, layers=layers,
        evidence=evidence_results,
    )


def _content_layers(statement: dict[str, Any], options: VerifyOptions, secret: str | None) -> list[dict[str, Any]]:
    """Digests of what the client sent and received, the parameters the request resolves to, the token
    records (from the options or the response) and the body's text (with a decoder)."""
    predicate = statement["predicate"]
    layers = [check_response(options.response, statement, secret)]
    if options.request is not None:
        layers.append(check_request(options.request, predicate, secret))
        layers.append(check_signed_params(options, predicate))
    tokens = tokens_from(options.response, options)
    if tokens is not None:
        layers.append(check_tokens(tokens, predicate))
    else:
        layers.append({"layer": "token_records", "status": "unchecked", "detail": "no token records given"})
    if options.decoder is not None:
        layers.append(check_text(options, predicate, tokens))
    return layers


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
