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

This package's API is what it exports here; the modules split it by job:

- `wire`: statement and predicate names, the digests a statement signs, the receipt secret;
- `statement`: building the statement (`build_statement`, `sealed_part`, `Issuance`);
- `issuer`: `ReceiptIssuer`, which signs and logs receipts, and `receipt_document`;
- `parse`: reading a receipt document and its statement strictly (`parse_statement`);
- `sealed`: statement format 2, sealed under the requester's secret (`open_statement`);
- `verify`: `verify_receipt`, layer by layer, with the content checks in `checks` and the
  evidence slots in `evidence`;
- `errors`: one error class per layer.
"""

from __future__ import annotations

from ..checkpoint import CheckpointParseError
from ..disclosure import token_records_root
from ..dsse import SignatureError
from ..merkle import LogProofError
from ..options import VerifyOptions
from .checks import BODY_FINISH_REASON
from .errors import (
    EvidenceError,
    MissingEvidenceError,
    ReceiptParseError,
    ReceiptSecretError,
    RequestDigestError,
    ResponseTextError,
    SubjectDigestError,
    TokenRootError,
    UnpinnedKeyError,
)
from .issuer import ReceiptIssuer, default_origin, receipt_document
from .parse import ATTACHMENTS, check_sealed, load_json_file, loads_strict, parse_statement
from .sealed import disclosure_of, is_sealed, open_statement
from .statement import Issuance, build_statement, sealed_part
from .verify import VerifiedReceipt, verify_receipt
from .wire import (
    DISCLOSURE_KEY,
    ENGINE_KEY,
    PREDICATE_TYPE,
    PREDICATE_TYPE_V2,
    PREDICATE_TYPES,
    RESPONSE_DIGEST_FORMATS,
    RESPONSE_DIGEST_KEY,
    RESPONSE_DIGEST_V1,
    RESPONSE_DIGEST_V2,
    RESPONSE_DIGEST_V3,
    RESPONSE_EXCLUDED_KEY,
    SEALED_DIGEST_KEY,
    SEALED_FIELDS,
    STATEMENT_TYPE,
    SUBJECT_NAME,
    new_receipt_secret,
    request_digest,
    response_digest,
    sealed_digest,
    strip_nulls,
)

__all__ = [
    "ReceiptIssuer", "VerifiedReceipt", "verify_receipt", "build_statement", "response_digest",
    "token_records_root", "default_origin", "ReceiptParseError", "SignatureError",
    "SubjectDigestError", "TokenRootError", "LogProofError", "EvidenceError", "RequestDigestError",
    "ResponseTextError", "UnpinnedKeyError", "MissingEvidenceError", "VerifyOptions", "strip_nulls",
    "CheckpointParseError", "receipt_document", "parse_statement", "loads_strict", "load_json_file",
    "ReceiptSecretError", "open_statement", "disclosure_of", "is_sealed", "new_receipt_secret",
    "request_digest", "sealed_digest", "sealed_part", "PREDICATE_TYPE_V2", "DISCLOSURE_KEY",
    # statement format names and the rest of the module-level API
    "Issuance", "check_sealed", "ATTACHMENTS", "BODY_FINISH_REASON", "STATEMENT_TYPE", "PREDICATE_TYPE",
    "PREDICATE_TYPES", "SUBJECT_NAME", "RESPONSE_EXCLUDED_KEY", "RESPONSE_DIGEST_KEY", "RESPONSE_DIGEST_V1",
    "RESPONSE_DIGEST_V2", "RESPONSE_DIGEST_V3", "RESPONSE_DIGEST_FORMATS", "SEALED_DIGEST_KEY", "SEALED_FIELDS",
    "ENGINE_KEY",
]
