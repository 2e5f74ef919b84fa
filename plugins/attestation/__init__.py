"""Built-in integrity layer: TEE attestation (registered like any third-party plugin).

- `register_evidence_types`: SEV-SNP, TDX, NVIDIA and SIMULATED.
- `register_commands`: `specguard attest verify|show|collect`.
- `register_routes`: `GET /specguard/v1/attestation[?nonce=<hex>]` returns node evidence bound
  to the node key (without a nonce: the evidence the node's receipts reference).
- `node_attestation`: `{type, evidence_digest, simulated}` of the node's sealing evidence (verifier
  nodes put the digest in their votes).
- `seal_transcript`: adds `evidence["attestation"]` = the `node_attestation` answer.
- `verify_evidence`: checks the `attestation` slot of a receipt against an evidence file.

Needs from the node object: `public_key_bytes`, `key_id`, `policy`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from specguard.attest.tee.builtin import BUILTIN_TYPES
from specguard.attest.tee.document import load_document, verify_document
from specguard.attest.tee.errors import EvidenceParseError, EvidenceVerificationError
from specguard.hookspecs import hookimpl
from specguard.node_evidence import node_evidence

from . import cli as cli_commands
from . import routes

if TYPE_CHECKING:
    from collections.abc import Callable

    import click
    from fastapi import FastAPI

    from specguard.attest.options import VerifyOptions
    from specguard.context import NodeContext
    from specguard.transcript import Transcript

log = logging.getLogger("specguard.attest")



@hookimpl
def register_evidence_types(register: Callable[[Any], None]) -> None:
    for evidence_type in BUILTIN_TYPES:
        register(evidence_type)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(cli_commands.attest_group)


@hookimpl
def node_attestation(node: NodeContext | None) -> dict[str, Any] | None:
    if node is None:  # outside a node: no key to bind evidence to
        return None
    doc = node_evidence(node)
    return {"type": doc.type, "evidence_digest": doc.digest(), "simulated": doc.simulated}


@hookimpl
def seal_transcript(transcript: Transcript | None, evidence: dict[str, Any], node: NodeContext | None) -> None:
    if node is None:
        return
    from specguard.plugin_manager import load_plugins

    pm = load_plugins()
    # through the hook: a plugin with its own TEE (tryfirst) decides what receipts name
    evidence["attestation"] = pm.hook.node_attestation(node=node)


@hookimpl
def verify_evidence(slot: str, value: Any, statement: dict[str, Any], options: VerifyOptions) -> dict[str, Any] | None:
    """Check the receipt's signed `attestation` slot: against the evidence file given
    (`options.attestation_evidence`), under `options.policy` (strict when none is given).

    A policy that requires attestation rejects a slot that says `simulated: true` (with or without
    a file) and a missing file; only without such a policy is "no file given" left unchecked.
    """
    if slot != "attestation":
        return None
    from specguard.attest.options import VerifyOptions
    from specguard.attest.tee.errors import AttestationPolicyError

    options = options if options is not None else VerifyOptions()
    if not isinstance(value, dict) or not isinstance(value.get("evidence_digest"), str) \
            or not isinstance(value.get("simulated"), bool):
        raise EvidenceParseError("receipt attestation slot is malformed", field="attestation",
                                 got=sorted(value) if isinstance(value, dict) else type(value).__name__,
                                 expected="{type, evidence_digest, simulated: bool}")
    required = options.policy_requires_attestation
    policy_name = getattr(options.policy, "name", None)
    if required and value["simulated"] and not options.policy_allows_simulated:
        raise AttestationPolicyError(f"policy {policy_name!r} requires attestation, but the receipt's signed "
                                     "attestation slot says the evidence is SIMULATED", field="attestation.simulated",
                                     got=True, expected=False)
    given = options.attestation_evidence
    if given is None:
        if required:
            raise AttestationPolicyError(f"policy {policy_name!r} requires attestation, but no evidence file was "
                                         "given (--attestation-evidence) to check the receipt's slot against",
                                         field="attestation_evidence", got=None, expected="an evidence document")
        return {"slot": "attestation", "checked": False, "type": value.get("type"), "simulated": value["simulated"],
                "reason": "no evidence file given (--attestation-evidence): the attestation was NOT verified"}
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
    from specguard.plugin_manager import registered_evidence_types
    from specguard.policies import evidence_policy

    policy = evidence_policy(options.policy)
    verified = verify_document(doc, policy, at=options.at, now=options.now, collateral=options.collateral,
                               expected_public_key=public_key, types=registered_evidence_types())
    return {"slot": "attestation", "checked": True, "type": doc.type, "simulated": doc.simulated,
            "evidence_digest": doc.digest(), "tcb_status": verified.tcb_status, "chain": list(verified.chain),
            "policy": getattr(policy, "name", None)}


@hookimpl
def register_routes(app: FastAPI, node: NodeContext) -> None:
    """HTTP routes of this layer (see routes.py)."""
    routes.register(app, node)
