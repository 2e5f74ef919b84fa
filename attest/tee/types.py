"""The evidence-type protocol plugins implement, and the verified result every type returns.

An evidence type keeps the three layers apart (as google/go-sev-guest's abi / verify / validate):

- `parse(data) -> parsed`: bytes to an immutable typed object; raises only `EvidenceParseError`.
- `verify(parsed, *, at, trust, certs, collateral) -> Verified`: cryptography against pinned
  roots at time `at`; raises an `EvidenceVerificationError` subclass, never returns False.
- `validate(verified, section, *, public_key, nonce, now, collected_at) -> None`: the policy's
  `[attestation]` table; raises `AttestationPolicyError` listing every violated rule.
- `show(parsed) -> dict`: a JSON-able view of every field, for `specguard attest show`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: what every output says when a certificate chain was not checked against a revocation list
REVOCATION_NOT_CHECKED = "revocation not checked"


@dataclass(frozen=True)
class Verified:
    """Evidence that passed cryptographic verification, with its normalized claims.

    `claims` always has `report_data` (bytes: 64 for CPU evidence, 32 for GPU evidence) and `debug` (bool); each type adds its own
    measurements. `tcb_status` is set when collateral yielded one (TDX). `simulated` is True
    only for the SIMULATED development type.
    """

    type: str
    parsed: Any
    claims: Mapping[str, Any]
    verified_at: dt.datetime
    chain: tuple[str, ...] = ()
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    simulated: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: GPU evidence verified next to this CPU evidence (its nonce derived from it), see document.py
    attached: tuple[Verified, ...] = ()
    #: True when the chain was checked against current CRLs, False when it was not (no CRL given),
    #: None for types without revocation lists here
    revocation_checked: bool | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (bytes as hex)."""
        out = {
            "type": self.type,
            "simulated": self.simulated,
            "verified_at": self.verified_at.isoformat(),
            "chain": list(self.chain),
            "tcb_status": self.tcb_status,
            "advisories": list(self.advisories),
            "claims": jsonable(dict(self.claims)),
            "notes": list(self.notes),
            "revocation": None if self.revocation_checked is None else
            "checked" if self.revocation_checked else REVOCATION_NOT_CHECKED,
        }
        if self.attached:
            out["attached"] = [a.summary() for a in self.attached]
        return out


def jsonable(value: Any) -> Any:
    """Bytes to hex, tuples to lists, dataclasses to dicts, recursively."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


@runtime_checkable
class EvidenceType(Protocol):
    """What `register_evidence_types(register)` hook implementations register."""

    name: str
    description: str

    def parse(self, data: bytes) -> Any: ...

    def verify(
        self,
        parsed: Any,
        *,
        at: dt.datetime | None = None,
        trust: Any = None,
        certs: bytes | None = None,
        collateral: Any = None,
    ) -> Verified: ...

    def validate(
        self,
        verified: Verified,
        section: Mapping[str, Any],
        *,
        public_key: bytes | None = None,
        nonce: bytes | None = None,
        now: dt.datetime | None = None,
        collected_at: dt.datetime | None = None,
    ) -> None: ...  # GPU types (`gpu = True`) also take `expected_report_data: bytes | None`

    def show(self, parsed: Any) -> dict[str, Any]: ...
