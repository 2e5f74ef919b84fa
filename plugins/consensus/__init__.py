"""Built-in integrity layer: consensus (registered like any third-party plugin).

- Verifier nodes (`node.role == "verifier"`) get POST /specguard/v1/verify and
  GET /specguard/v1/verifier/key.
- Serving nodes with verifiers configured (`node.consensus` from `specguard serve --verifier URL
  --verifier-key KEY --quorum Q`, or the policy's [consensus] table) refuse to start without
  trusted verifier keys, send each verifier the client's request, the response body, the
  transcript and the receipt, gather signed votes and attach a quorum certificate: returned as {"consensus": certificate} (the server puts it in the
  response's "specguard" object) and set as receipt["consensus"].
- Without quorum the policy's `on_no_quorum` decides: "flag" (attach the uncertified certificate
  and log a warning), "withhold" (raise ConsensusWithheldError, HTTP 422, the dissent in its
  message) or "fail" (raise NoQuorumError, HTTP 503).
- `specguard verify` passes receipt["consensus"] to `verify_evidence(slot="consensus")`, which
  recounts the votes under `options.verifier_keys` (quorum default n - f of the pinned keys).
- CLI: `specguard consensus check | verify-certificate | show-key | calibrate`.
See docs/consensus.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from specguard.consensus.config import (
    PIN_FILE,
    ConsensusConfig,
    ConsensusWithheldError,
    NoQuorumError,
    consensus_config,
    consensus_policy,
    default_quorum,
)
from specguard.consensus.profiles import accepted_set
from specguard.consensus.quorum import (
    QuorumError,
    ReceiptedResponse,
    pinned_keys,
    request_certificate,
    verify_certificate,
)
from specguard.errors import ConfigError, PolicyError, SpecguardError
from specguard.hookspecs import hookimpl

from . import cli as cli_commands
from . import routes

if TYPE_CHECKING:
    from fastapi import FastAPI

    from specguard.attest.options import VerifyOptions
    from specguard.context import NodeContext
    from specguard.transcript import Transcript

log = logging.getLogger("specguard.consensus")



# --- serving side -----------------------------------------------------------------------------


def _trusted_keys(config: ConsensusConfig, node: NodeContext) -> list[bytes]:
    keys = list(config.trusted_keys)
    if config.trust_on_first_use:
        home = Path(node.home)
        keys.extend(k for k in pinned_keys(config.verifiers, home / PIN_FILE, config.timeout) if k not in keys)
    return keys


def check_serving_config(node: NodeContext) -> ConsensusConfig | None:
    """A serving node with verifiers must trust verifier keys (or opt into trust-on-first-use):
    otherwise every certificate would be uncertifiable. Raises ConfigError at start."""
    config = consensus_config(node)
    if config is None:
        return None
    if not config.trusted_keys and not config.trust_on_first_use:
        raise ConfigError("verifiers are set but no trusted verifier keys: give --verifier-key FILE|HEX (one per "
                          "verifier) or [consensus] verifier_keys", field="--verifier-key", got=0,
                          expected=f"keys of the {len(config.verifiers)} verifiers")
    return config


@hookimpl
def judge_transcript(transcript: Transcript, receipt: dict[str, Any], node: NodeContext | None,
                     request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any] | None:
    if node is None or node.role == "verifier":
        return None
    config = consensus_config(node)
    if config is None:
        return None
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise ConfigError("consensus needs the client's request and the response body to have them verified",
                          field="judge_transcript", got=type(request).__name__)
    keys = _trusted_keys(config, node)
    if not keys:
        log.error("consensus: no trusted verifier keys (give --verifier-key or [consensus].verifier_keys)")
    checked = ReceiptedResponse(transcript.to_json(include_steps=False), receipt, request, response)
    cert = request_certificate(config.verifiers, checked, keys, config.quorum, timeout=config.timeout)
    if isinstance(receipt, dict):
        receipt["consensus"] = cert
    # the node decides by recounting the signed votes under its own keys, quorum and accepted profiles,
    # like a client would
    certified = False
    if keys:
        try:
            accepted = accepted_set(consensus_policy(node.policy).accept_profiles)
            verify_certificate(cert, receipt["envelope"] if "envelope" in receipt else receipt, keys, config.quorum,
                               accept_profiles=accepted)
            certified = True
        except SpecguardError as exc:
            log.debug("consensus: certificate does not verify: %s", exc.summary())
    if not certified:
        cert["certified"] = False
        summary = (f"no consensus quorum: {cert['accepts']} of {cert['verifiers']} verifiers accepted, "
                   f"need {config.quorum}; dissent {[(d['key_id'], d['verdict']) for d in cert['dissent']]}; "
                   f"failures {len(cert['failures'])}")
        if config.on_no_quorum == "fail":
            raise NoQuorumError(summary, field="consensus", got=cert["accepts"], expected=f">= {config.quorum}")
        if config.on_no_quorum == "withhold":
            reasons = list(dict.fromkeys(r for d in cert["dissent"] for r in d["reasons"][:3]))
            raise ConsensusWithheldError(summary + f"; reasons {reasons[:6]}", field="consensus",
                                         got=cert["accepts"], expected=f">= {config.quorum}")
        log.warning("consensus: FLAGGED response %s", summary)
    return {"consensus": cert}


# --- offline verification ---------------------------------------------------------------------


@hookimpl
def verify_evidence(slot: str, value: Any, statement: dict[str, Any], options: VerifyOptions) -> dict[str, Any] | None:
    """Recount a quorum certificate under the pinned verifier keys (`options.verifier_keys`).

    The quorum is the largest of `options.quorum` (default: n - f of the n pinned keys), the
    policy's [consensus] quorum and the certificate's own; no field of the certificate lowers it.
    Accepting votes count only under a tolerance profile the auditor accepts: exact and same-engine,
    plus `options.accept_profiles` (`--accept-profile`) and the policy's [consensus] accept_profiles.
    """
    if slot != "consensus":
        return None
    from specguard.attest.options import VerifyOptions

    options = options if options is not None else VerifyOptions()
    keys = list(options.verifier_keys)
    quorum = options.quorum if options.quorum is not None else default_quorum(len(keys))
    quorum = max(quorum, options.policy_quorum)
    envelope = options.envelope
    predicate = statement.get("predicate", {}) if isinstance(statement, dict) else {}
    binding = predicate.get("binding_digest")
    if not isinstance(binding, str):
        raise QuorumError("statement has no binding digest to check the certificate against",
                          field="predicate.binding_digest")
    if envelope is None:
        raise QuorumError("no receipt envelope to check the certificate's receipt digest against",
                          field="envelope")
    model = predicate.get("model") if isinstance(predicate.get("model"), dict) else {}
    accepted = accepted_set([*options.accept_profiles, *consensus_policy(options.policy).accept_profiles])
    verified = verify_certificate(value, dict(envelope), keys, quorum or None, binding_digest=binding,
                                  model_digest=model.get("digest"), accept_profiles=accepted)
    out = verified.to_json()
    out["receipt_digest_checked"] = True
    out["required_quorum"] = quorum
    out.update(_attested_verifiers(verified, options))
    return out


def _attested_verifiers(verified: Any, options: Any) -> dict[str, Any]:
    """Check the verifier evidence files given (`--verifier-evidence`) and the policy's
    `[consensus] min_attested_verifiers`: how many accepting votes must come from verifiers whose
    evidence was verified here."""
    from specguard.consensus.quorum import check_verifier_evidence

    documents = list(options.verifier_evidence)
    required = consensus_policy(options.policy).min_attested_verifiers
    if not documents and not required:
        return {}
    from specguard.plugin_manager import registered_evidence_types
    from specguard.policies import evidence_policy

    policy = evidence_policy(options.policy)
    attested = check_verifier_evidence(verified, documents, policy, at=options.at, now=options.now,
                                       collateral=options.collateral, types=registered_evidence_types())
    distinct = sorted({a["key_id"] for a in attested})
    if len(distinct) < required:
        raise PolicyError("too few accepting verifiers with verified TEE evidence",
                          field="consensus.min_attested_verifiers", got=len(distinct), expected=f">= {required}")
    return {"attested_verifiers": attested}


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(cli_commands.consensus_group)


@hookimpl
def register_routes(app: FastAPI, node: NodeContext) -> None:
    """HTTP routes of this layer (see routes.py); a serving node's consensus settings are checked here, at start."""
    if node.role != "verifier":
        check_serving_config(node)
    routes.register(app, node)
