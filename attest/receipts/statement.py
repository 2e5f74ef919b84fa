"""Building the in-toto Statement a receipt signs (format 1 in clear, format 2 sealed)."""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from typing import Any

from ...keys import NodeKey
from ...transcript import LOGPROB_DECIMALS, Transcript, ids_digest
from ..disclosure import token_records_root
from ..request_defaults import DEFAULTS_KEY, RequestDefaults
from .wire import (
    ENGINE_KEY,
    PREDICATE_TYPE,
    PREDICATE_TYPE_V2,
    RESPONSE_DIGEST_KEY,
    RESPONSE_DIGEST_V2,
    RESPONSE_DIGEST_V3,
    SEALED_DIGEST_KEY,
    STATEMENT_TYPE,
    SUBJECT_NAME,
    request_digest,
    response_digest,
    sealed_digest,
)


@dataclass(frozen=True)
class Issuance:
    """What the issuer chooses for one statement: its id and time (fresh when None) and the request
    defaults the node filled in (signed so verifiers re-check them)."""

    receipt_id: str | None = None
    issued_at: str | None = None
    request_defaults: RequestDefaults | None = None


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
    issuance: Issuance | None = None,
) -> dict[str, Any]:
    """The in-toto Statement for one response (see docs/receipts.md for every field).

    With `transcript.salt` (the receipt secret) this is statement format 2: the public predicate
    shows only salted digests and commits to the sealed part (`sealed_part`); without, format 1.
    """
    issuance = issuance or Issuance()
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
        "issued_at": issuance.issued_at or _utc_now(),
        "receipt_id": issuance.receipt_id or uuid.uuid4().hex,
        RESPONSE_DIGEST_KEY: RESPONSE_DIGEST_V3 if secret else RESPONSE_DIGEST_V2,
    }
    if issuance.request_defaults is not None:
        predicate[DEFAULTS_KEY] = issuance.request_defaults.to_json()
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

