"""The verifier side: judge one POST /specguard/v1/verify request and answer with a signed vote.

Request body: {"transcript": Transcript.to_json(), "receipt": receipt document or DSSE envelope,
"nonce": lowercase hex (16..128 digits)}. The verifier

1. parses the receipt envelope and its in-toto statement and checks the envelope signature
   under the node key the statement names (the verifier judges content; which node keys a
   client trusts is the client's business);
2. checks that the transcript is the one the receipt signs (binding digest, output ids digest,
   token-records root: so the claimed logprobs it judges are the signed ones);
3. re-derives the transcript with its own copy of the model (`rederive.judge`);
4. signs a vote binding the receipt digest, binding digest, the requester's nonce and verdict.

Malformed requests get a `VerifyRequestError` (HTTP 400) and no vote. Well-formed requests whose
transcript and receipt disagree get a signed "reject" vote saying why.

Fault injection FOR TESTS ONLY: when the environment variable SPECGUARD_TEST_VERIFIER_BEHAVIOUR
is set when the process starts, the verifier misbehaves on purpose (always-accept,
always-reject, slow, wrong-key, replay; "honest" behaves normally), logs a warning on every
vote, and exposes POST /specguard/v1/test/fault {"behaviour": ...} to switch behaviour. Without
the variable none of this exists. Never set it in production; see docs/consensus.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..attest import dsse
from ..attest.disclosure import token_records_root
from ..attest.receipts import parse_statement
from ..errors import ParseError, RequestError, SpecguardError, VerificationError
from ..keys import NodeKey
from ..transcript import Transcript, ids_digest
from .rederive import ACCEPT, REJECT, Judgement, Tolerances, judge
from .vote import envelope_digest, sign_vote

log = logging.getLogger("specguard.consensus.verifier")

BEHAVIOUR_ENV = "SPECGUARD_TEST_VERIFIER_BEHAVIOUR"
SLOW_SECONDS_ENV = "SPECGUARD_TEST_VERIFIER_SLOW_SECONDS"
BEHAVIOURS = ("honest", "always-accept", "always-reject", "slow", "wrong-key", "replay")
_NONCE = re.compile(r"(?:[0-9a-f]{2}){8,64}")
MAX_OUTPUT_TOKENS = 8192


class VerifyRequestError(RequestError):
    """A verify request is malformed (HTTP 400, no vote)."""

    http_status = 400


@dataclass
class FaultInjection:
    """Deliberate misbehaviour for multi-node tests (SPECGUARD_TEST_VERIFIER_BEHAVIOUR)."""

    behaviour: str = "honest"
    slow_seconds: float = 30.0
    wrong_key: NodeKey | None = None
    last_vote: dict[str, Any] | None = None

    @classmethod
    def from_env(cls) -> FaultInjection | None:
        raw = os.environ.get(BEHAVIOUR_ENV)
        if raw is None:
            return None
        if raw not in BEHAVIOURS:
            raise VerifyRequestError(f"unknown {BEHAVIOUR_ENV}", field=BEHAVIOUR_ENV, got=raw, expected=BEHAVIOURS)
        log.warning("TEST FAULT INJECTION ENABLED: this verifier behaves %r on purpose (%s); never use in "
                    "production", raw, BEHAVIOUR_ENV)
        fault = cls(slow_seconds=float(os.environ.get(SLOW_SECONDS_ENV, "30")))
        fault.set(raw)
        return fault

    def set(self, behaviour: str) -> None:
        """Switch behaviour (the test-only route POST /specguard/v1/test/fault calls this)."""
        if behaviour not in BEHAVIOURS:
            raise VerifyRequestError("unknown fault behaviour", field="behaviour", got=behaviour,
                                     expected=BEHAVIOURS)
        log.warning("TEST FAULT INJECTION: verifier switched to behaviour %r", behaviour)
        self.behaviour = behaviour
        self.last_vote = None
        if behaviour == "wrong-key":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            self.wrong_key = NodeKey(Ed25519PrivateKey.generate())


def _attestation_digest(node: Any) -> str | None:
    """The digest of the node's own TEE evidence (from the node_attestation hook), or None."""
    given = getattr(node, "attestation_digest", None)
    if given is not None:
        return given
    from ..plugin_manager import load_plugins

    info = load_plugins().hook.node_attestation(node=node)
    return info["evidence_digest"] if info else None


@dataclass
class VerifierService:
    """Holds the verifier's model, key and tolerances; `handle` answers one verify request."""

    model: Any  # LoadedModel
    key: NodeKey
    tolerances: Tolerances = field(default_factory=Tolerances)
    attestation_digest: str | None = None
    fault: FaultInjection | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_node(cls, node: Any) -> VerifierService:
        """The service for a node (model, signing key, [consensus] policy tolerances)."""
        key = getattr(node, "node_key", None) or NodeKey(node.signing_key)
        section = node.policy.section("consensus") if getattr(node, "policy", None) is not None else {}
        return cls(model=node.model, key=key, tolerances=Tolerances.from_policy(section),
                   attestation_digest=_attestation_digest(node), fault=FaultInjection.from_env())

    def public_info(self) -> dict[str, Any]:
        """GET /specguard/v1/verifier/key."""
        return {"key_id": self.key.key_id, "public_key": self.key.public_hex, "model_digest": self.model.digest,
                "tokenizer_digest": self.model.tokenizer_digest, "attestation_digest": self.attestation_digest}

    def handle(self, body: Any) -> dict[str, Any]:
        """Judge one request body; return the signed vote JSON."""
        behaviour = self.fault.behaviour if self.fault is not None else "honest"
        transcript, envelope, statement, nonce = self._parse(body)
        judgement = self._judge(transcript, statement)
        return self._vote(envelope, transcript, nonce, judgement, behaviour)

    # -- steps ---------------------------------------------------------------------------------

    def _parse(self, body: Any) -> tuple[Transcript, dict[str, Any], dict[str, Any], str]:
        if not isinstance(body, dict) or not {"transcript", "receipt", "nonce"} <= set(body):
            raise VerifyRequestError("body must be an object with transcript, receipt and nonce", field="body",
                                     got=sorted(body) if isinstance(body, dict) else type(body).__name__)
        nonce = body["nonce"]
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise VerifyRequestError("nonce must be 16..128 lowercase hex digits", field="nonce", got=nonce)
        receipt = body["receipt"]
        envelope = receipt.get("envelope") if isinstance(receipt, dict) and "envelope" in receipt else receipt
        try:
            parsed = dsse.parse_envelope(envelope)
            statement = parse_statement(parsed.payload)
            node_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
            dsse.verify_envelope(parsed, [node_key])
        except (ParseError, VerificationError) as exc:
            raise VerifyRequestError(f"receipt does not verify: {exc.message}", field=exc.field or "receipt",
                                     got=exc.got, expected=exc.expected) from exc
        raw = body["transcript"]
        try:
            if not isinstance(raw, dict):
                raise TypeError("transcript must be an object")
            transcript = Transcript.from_json(raw)
        except SpecguardError as exc:
            raise VerifyRequestError(f"transcript is invalid: {exc.message}", field=exc.field or "transcript",
                                     got=exc.got) from exc
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise VerifyRequestError("transcript is malformed", field="transcript",
                                     got=f"{type(exc).__name__}: {exc}"[:200]) from exc
        if len(transcript.output_ids) > MAX_OUTPUT_TOKENS or len(transcript.prompt_ids) > self.model.max_context:
            raise VerifyRequestError("transcript is too long to re-derive", field="transcript.output_ids",
                                     got=len(transcript.output_ids))
        return transcript, envelope, statement, nonce

    def _judge(self, transcript: Transcript, statement: dict[str, Any]) -> Judgement:
        predicate = statement["predicate"]
        mismatch: list[str] = []
        if transcript.binding_digest() != predicate["binding_digest"]:
            mismatch.append(f"binding_digest: transcript gives {transcript.binding_digest()}, receipt signs "
                            f"{predicate['binding_digest']}")
        if ids_digest(transcript.output_ids) != predicate["output_ids_digest"]:
            mismatch.append("output_ids_digest: transcript output ids differ from the signed ones")
        root = token_records_root(list(transcript.tokens))
        if root != predicate["token_records_root"]:
            mismatch.append(f"token_records_root: transcript token records give {root}, receipt signs "
                            f"{predicate['token_records_root']}")
        if mismatch:
            return Judgement(REJECT, ["transcript is not the one the receipt signs"] + mismatch, {})
        with self._lock:
            return judge(self.model, transcript, self.tolerances)

    def _vote(self, envelope: dict[str, Any], transcript: Transcript, nonce: str,
              judgement: Judgement, behaviour: str = "honest") -> dict[str, Any]:
        fault = self.fault
        key = self.key
        verdict, reasons = judgement.verdict, judgement.reasons
        if fault is not None and behaviour != "honest":
            log.warning("TEST FAULT INJECTION: verifier behaving %r for this vote", behaviour)
            if behaviour == "always-accept":
                verdict, reasons = ACCEPT, []
            elif behaviour == "always-reject":
                verdict, reasons = REJECT, ["fault injection: always-reject"]
            elif behaviour == "slow":
                time.sleep(fault.slow_seconds)
            elif behaviour == "wrong-key" and fault.wrong_key is not None:
                key = fault.wrong_key
            elif behaviour == "replay" and fault.last_vote is not None:
                return fault.last_vote
        vote = sign_vote(
            key,
            receipt_digest=envelope_digest(envelope),
            binding_digest=transcript.binding_digest(),
            nonce=nonce,
            verdict=verdict,
            reasons=reasons,
            stats=judgement.stats,
            model_digest=self.model.digest,
            attestation_digest=self.attestation_digest,
        )
        if fault is not None and behaviour == "replay":
            fault.last_vote = vote
        return vote
