"""Built-in integrity layer: TEE attestation (registered like any third-party plugin).

- `register_evidence_types`: SEV-SNP, TDX, NVIDIA and SIMULATED.
- `register_commands`: `specguard attest verify|show|collect`.
- `register_routes`: `GET /specguard/v1/attestation[?nonce=<hex>]` returns node evidence bound
  to the node key (without a nonce: the evidence the node's receipts reference).
- `node_attestation`: `{type, evidence_digest, simulated}` of the node's sealing evidence (verifier
  nodes put the digest in their votes).
- `seal_transcript`: adds `evidence["attestation"]` = the `node_attestation` answer.
- `verify_evidence`: checks the `attestation` slot of a receipt against an evidence file.

Needs from the node object: `public_key_bytes`, `key_id`, `policy`.
"""

from __future__ import annotations

import logging
from typing import Any

from specguard.attest.binding import MAX_NONCE, MIN_NONCE, seal_nonce
from specguard.attest.tee.builtin import BUILTIN_TYPES
from specguard.attest.tee.document import EvidenceDocument, load_document, verify_document
from specguard.attest.tee.errors import EvidenceParseError, EvidenceVerificationError
from specguard.hookspecs import hookimpl

log = logging.getLogger("specguard.attest")

#: evidence each node's receipts reference, keyed by the node's key_id
_SEALED: dict[str, EvidenceDocument] = {}


@hookimpl
def register_evidence_types(register):
    for evidence_type in BUILTIN_TYPES:
        register(evidence_type)


@hookimpl
def register_commands(cli):
    from specguard.attest.tee.cli import attest_group

    cli.add_command(attest_group)


def _allow_simulated(node: Any) -> bool:
    """SIMULATED evidence is produced unless the node's policy requires real attestation."""
    policy = getattr(node, "policy", None)
    section = policy.section("attestation") if policy is not None else {}
    return bool(section.get("allow_simulated", False)) or not section.get("required", False)


def node_evidence(node: Any, nonce: bytes | None = None) -> EvidenceDocument:
    """Fresh evidence for `nonce`, or (nonce None) the node's cached sealing evidence."""
    from specguard.attest.tee.collect import collect_evidence

    if nonce is not None:
        return collect_evidence(node.public_key_bytes, nonce, allow_simulated=_allow_simulated(node))
    key = str(node.key_id)
    if key not in _SEALED:
        _SEALED[key] = collect_evidence(node.public_key_bytes, seal_nonce(node.public_key_bytes),
                                        allow_simulated=_allow_simulated(node))
    doc = _SEALED[key]
    if doc.simulated:
        log.warning("SIMULATED attestation evidence used for node %s: it proves nothing", key)
    return doc


@hookimpl
def register_routes(app, node):
    from fastapi import HTTPException

    @app.get("/specguard/v1/attestation")
    def attestation(nonce: str | None = None) -> dict:
        """The node's evidence bound to its key and `nonce` (hex, 16..64 bytes)."""
        if nonce is None:
            return node_evidence(node).to_json()
        try:
            raw = bytes.fromhex(nonce)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail="nonce must be hex") from exc
        if not MIN_NONCE <= len(raw) <= MAX_NONCE:
            raise HTTPException(status_code=400, detail=f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes")
        from specguard.errors import SpecguardError

        try:
            return node_evidence(node, raw).to_json()
        except SpecguardError as exc:
            raise HTTPException(status_code=503, detail=exc.summary()) from exc


@hookimpl
def node_attestation(node):
    if getattr(node, "public_key_bytes", None) is None:  # no node key: nothing to bind evidence to
        return None
    doc = node_evidence(node)
    return {"type": doc.type, "evidence_digest": doc.digest(), "simulated": doc.simulated}


@hookimpl
def seal_transcript(transcript, evidence, node):
    if node is None:
        return
    from specguard.plugin_manager import load_plugins

    pm = load_plugins()
    # through the hook: a plugin with its own TEE (tryfirst) decides what receipts name
    evidence["attestation"] = pm.hook.node_attestation(node=node)


@hookimpl
def verify_evidence(slot, value, statement, options):
    if slot != "attestation":
        return None
    options = options or {}
    given = options.get("attestation_evidence")
    if not given:
        return {"slot": "attestation", "checked": False,
                "type": value.get("type") if isinstance(value, dict) else None,
                "simulated": value.get("simulated") if isinstance(value, dict) else None,
                "reason": "no evidence file given (--attestation-evidence): the attestation was NOT verified"}
    if not isinstance(value, dict) or not isinstance(value.get("evidence_digest"), str):
        raise EvidenceParseError("receipt attestation slot is malformed", field="attestation",
                                 expected="{type, evidence_digest, simulated}")
    doc = load_document(given)
    if doc.digest() != value["evidence_digest"]:
        raise EvidenceVerificationError("evidence file is not the one the receipt references",
                                        field="attestation.evidence_digest", got=doc.digest(),
                                        expected=value["evidence_digest"])
    if doc.type != value.get("type") or doc.simulated != value.get("simulated"):
        raise EvidenceVerificationError("receipt attestation slot disagrees with the evidence file",
                                        field="attestation.type", got=(value.get("type"), value.get("simulated")),
                                        expected=(doc.type, doc.simulated))
    try:
        public_key = bytes.fromhex(statement["predicate"]["node"]["public_key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EvidenceParseError("receipt statement lacks predicate.node.public_key (hex)",
                                 field="predicate.node.public_key") from exc
    from specguard.policies import evidence_policy

    policy = evidence_policy(options.get("policy"))
    verified = verify_document(doc, policy, at=options.get("at"), now=options.get("now"),
                               collateral=options.get("collateral"), expected_public_key=public_key)
    return {"slot": "attestation", "checked": True, "type": doc.type, "simulated": doc.simulated,
            "evidence_digest": doc.digest(), "tcb_status": verified.tcb_status, "chain": list(verified.chain),
            "policy": getattr(policy, "name", None)}
