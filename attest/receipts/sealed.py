"""Statement format 2: content sealed under the requester's receipt secret, and opening it."""

from __future__ import annotations

from typing import Any

from ...canonical import CanonicalizationError, canonical_json, sha256_hex
from .errors import ReceiptParseError, ReceiptSecretError
from .parse import check_sealed, require
from .wire import (
    DISCLOSURE_KEY,
    PREDICATE_TYPE_V2,
    RESPONSE_EXCLUDED_KEY,
    SEALED_DIGEST_KEY,
    SEALED_FIELDS,
    sealed_digest,
    secret_bytes,
)


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
    d = require.keys(disclosure, "receipt.disclosure", {"secret", "sealed"})
    secret_bytes(d["secret"])
    sealed = require.keys(d["sealed"], "receipt.disclosure.sealed", set(SEALED_FIELDS))
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
