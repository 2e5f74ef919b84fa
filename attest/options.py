"""What the user asks offline verification to check: one frozen, typed object.

`verify_receipt` (attest/receipts/verify.py) and every plugin's `verify_evidence(slot, value, statement,
options)` hook receive the same `VerifyOptions`. Every field that names a layer makes that layer
*required*: a receipt that lacks it fails with that layer's error (see `required_slots`), so a
check the user asked for can never come back "unchecked".

This module is part of the pure library: it knows the built-in slot names but imports no plugin.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import UsageError

#: evidence slot / attachment names of the built-in layers
ATTESTATION_SLOT = "attestation"
COMMITMENT_SLOT = "commitment"
CONSENSUS_SLOT = "consensus"


@runtime_checkable
class PolicyLike(Protocol):
    """What verification reads from a policy (specguard.policies.Policy satisfies it): its name and
    its typed `[attestation]` and `[consensus]` tables."""

    name: str

    @property
    def attestation(self) -> Any: ...

    @property
    def consensus(self) -> Any: ...


@dataclass(frozen=True)
class TextDecoder:
    """Decodes signed output ids back to the text a client saw (`--model REF`).

    `decode(ids)` must behave as the serving node's (skip special tokens); `tokenizer_digest` is
    the digest of the tokenizer it uses, checked against the receipt's signed one.
    """

    decode: Callable[[list[int]], str]
    tokenizer_digest: str


def _int_or_none(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{name} must be a positive integer", field=name, got=value)


@dataclass(frozen=True)
class VerifyOptions:
    """The user's verification inputs. Every field defaults to "not asked for".

    Signature layer: `trusted_keys` (32-byte Ed25519 node keys); without any, verification
    fails unless `allow_unpinned` (then the key the statement names is used, and reported).
    Response layer: `response` (the body the client got), `request` (the canonical request
    object, as the node dumps it), `decoder` (checks body text = decode(signed output ids)).
    Token layer: `tokens` (token records). Log layer: `checkpoint` (a saved signed note),
    `consistency_proof`. Evidence layers: `policy`, `attestation_evidence` (path or document),
    `collateral`, `at`/`now` (verification time), `model_commitment` (hex), `verifier_keys`,
    `quorum`, `verifier_evidence`. `envelope` is set by `verify_receipt` for attachments.
    """

    trusted_keys: tuple[bytes, ...] = ()
    allow_unpinned: bool = False
    response: Mapping[str, Any] | None = None
    request: Mapping[str, Any] | None = None
    decoder: TextDecoder | None = None
    tokens: Sequence[Any] | None = None
    checkpoint: str | None = None
    consistency_proof: tuple[bytes, ...] | None = None
    policy: PolicyLike | None = None
    attestation_evidence: Any = None
    collateral: Any = None
    at: _dt.datetime | None = None
    now: _dt.datetime | None = None
    model_commitment: str | None = None
    verifier_keys: tuple[bytes, ...] = ()
    quorum: int | None = None
    verifier_evidence: tuple[Any, ...] = ()
    #: the request's prompt ids through the model's tokenizer and template (`--request` with `--model`)
    prompt_ids: Sequence[int] | None = None
    #: the defaults the user accepts for omitted request fields (None: the built-in ExpectedDefaults())
    expected_defaults: Any = None
    #: consensus tolerance profiles counted beyond exact and same-engine (`--accept-profile`)
    accept_profiles: tuple[str, ...] = ()
    envelope: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("trusted_keys", "verifier_keys"):
            keys = tuple(getattr(self, name) or ())
            for k in keys:
                if not isinstance(k, bytes | bytearray) or len(k) != 32:
                    raise UsageError("keys must be 32 raw bytes (Ed25519)", field=name,
                                     got=k if not isinstance(k, bytes | bytearray) else f"{len(k)} bytes")
            object.__setattr__(self, name, tuple(bytes(k) for k in keys))
        object.__setattr__(self, "verifier_evidence", tuple(self.verifier_evidence or ()))
        object.__setattr__(self, "accept_profiles", tuple(self.accept_profiles or ()))
        if self.consistency_proof is not None:
            object.__setattr__(self, "consistency_proof", tuple(self.consistency_proof))
        if self.policy is not None and not isinstance(self.policy, PolicyLike):
            raise UsageError("policy must be a loaded policy (with .name, .attestation and .consensus), not "
                             f"{type(self.policy).__name__}", field="policy", got=repr(self.policy)[:80])
        if self.model_commitment is not None and not isinstance(self.model_commitment, str):
            raise UsageError("model commitment must be a hex string", field="model_commitment",
                             got=type(self.model_commitment).__name__)
        _int_or_none(self.quorum, "quorum")

    # -- what the user asked for ----------------------------------------------------------------

    @property
    def policy_requires_attestation(self) -> bool:
        """A policy whose [attestation] says `required = true`."""
        return self.policy is not None and bool(self.policy.attestation.required)

    @property
    def policy_allows_simulated(self) -> bool:
        """No policy, or one whose [attestation] says `allow_simulated = true`."""
        return self.policy is None or bool(self.policy.attestation.allow_simulated)

    @property
    def policy_quorum(self) -> int:
        return int(self.policy.consensus.quorum or 0) if self.policy is not None else 0

    def required_slots(self) -> dict[str, str]:
        """Evidence slots / attachments that must be present and verified, with the option that asks."""
        out: dict[str, str] = {}
        if self.verifier_keys:
            out[CONSENSUS_SLOT] = "--verifier-key"
        if self.quorum:
            out[CONSENSUS_SLOT] = "--quorum"
        if self.verifier_evidence:
            out[CONSENSUS_SLOT] = "--verifier-evidence"
        if self.policy_quorum or (self.policy is not None and self.policy.consensus.min_attested_verifiers):
            out.setdefault(CONSENSUS_SLOT, f"policy {self.policy.name!r} [consensus]")
        if self.model_commitment:
            out[COMMITMENT_SLOT] = "--model-commitment"
        if self.attestation_evidence is not None:
            out[ATTESTATION_SLOT] = "--attestation-evidence"
        elif self.policy_requires_attestation:
            out[ATTESTATION_SLOT] = f"policy {self.policy.name!r} ([attestation] required = true)"
        return out


#: `verify_receipt`'s evidence verifier: (slot, value, statement, options) -> a result dict when it
#: verified the slot, None when no verifier claims it. It raises the layer's error on failure.
EvidenceVerifier = Callable[[str, Any, dict[str, Any], VerifyOptions], "dict[str, Any] | None"]

__all__ = ["VerifyOptions", "TextDecoder", "PolicyLike", "EvidenceVerifier", "ATTESTATION_SLOT",
           "COMMITMENT_SLOT", "CONSENSUS_SLOT"]
