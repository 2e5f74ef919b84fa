"""Built-in integrity layer: consensus (registered like any third-party plugin).

- Verifier nodes (`node.role == "verifier"`) get POST /specguard/v1/verify and
  GET /specguard/v1/verifier/key.
- Serving nodes with verifiers configured (`node.consensus` from `specguard serve --verifier URL
  --quorum Q`, or the policy's [consensus] table) gather signed votes for every response and
  attach a quorum certificate: returned as {"consensus": certificate} (the server puts it in the
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
from typing import Any

import click

from specguard.consensus.config import (
    PIN_FILE,
    ConsensusConfig,
    ConsensusWithheldError,
    NoQuorumError,
    consensus_config,
)
from specguard.consensus.quorum import (
    QuorumError,
    pinned_keys,
    request_certificate,
    verify_certificate,
)
from specguard.errors import ConfigError, PolicyError
from specguard.hookspecs import hookimpl

from . import cli as cli_commands
from . import routes

log = logging.getLogger("specguard.consensus")



# --- serving side -----------------------------------------------------------------------------


def _trusted_keys(config: ConsensusConfig, node: Any) -> list[bytes]:
    keys = list(config.trusted_keys)
    if config.trust_on_first_use:
        home = Path(getattr(node, "home", None) or ".")
        keys.extend(k for k in pinned_keys(config.verifiers, home / PIN_FILE, config.timeout) if k not in keys)
    return keys


@hookimpl
def judge_transcript(transcript: Any, receipt: Any, node: Any) -> dict[str, Any] | None:
    if node is None or getattr(node, "role", "serve") == "verifier":
        return None
    config = consensus_config(node)
    if config is None:
        return None
    keys = _trusted_keys(config, node)
    if not keys:
        log.error("consensus: no trusted verifier keys (set [consensus].verifier_keys or trust_on_first_use)")
    cert = request_certificate(config.verifiers, transcript.to_json(include_steps=False), receipt, keys,
                               config.quorum, timeout=config.timeout)
    if isinstance(receipt, dict):
        receipt["consensus"] = cert
    if not cert["certified"]:
        summary = (f"no consensus quorum: {cert['accepts']} of {cert['verifiers']} verifiers accepted, "
                   f"need {cert['quorum']}; dissent {[(d['key_id'], d['verdict']) for d in cert['dissent']]}; "
                   f"failures {len(cert['failures'])}")
        if config.on_no_quorum == "fail":
            raise NoQuorumError(summary, field="consensus", got=cert["accepts"], expected=f">= {cert['quorum']}")
        if config.on_no_quorum == "withhold":
            reasons = list(dict.fromkeys(r for d in cert["dissent"] for r in d["reasons"][:3]))
            raise ConsensusWithheldError(summary + f"; reasons {reasons[:6]}", field="consensus",
                                         got=cert["accepts"], expected=f">= {cert['quorum']}")
        log.warning("consensus: FLAGGED response %s", summary)
    return {"consensus": cert}


# --- offline verification ---------------------------------------------------------------------


def default_quorum(n: int) -> int:
    """n - f accepting votes of n pinned verifier keys, f = floor((n - 1) / 3) (0 when n = 0)."""
    return n - (n - 1) // 3 if n > 0 else 0


@hookimpl
def verify_evidence(slot: str, value: Any, statement: Any, options: Any) -> dict[str, Any] | None:
    """Recount a quorum certificate under the pinned verifier keys (`options.verifier_keys`).

    The quorum is the largest of `options.quorum` (default: n - f of the n pinned keys), the
    policy's [consensus] quorum and the certificate's own; no field of the certificate lowers it.
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
    verified = verify_certificate(value, dict(envelope), keys, quorum or None, binding_digest=binding,
                                  model_digest=model.get("digest"))
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
    required = options.policy_section("consensus").get("min_attested_verifiers", 0)
    if isinstance(required, bool) or not isinstance(required, int) or required < 0:
        raise ConfigError("consensus.min_attested_verifiers must be a non-negative integer",
                          field="consensus.min_attested_verifiers", got=required)
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
def register_routes(app, node):
    """HTTP routes of this layer (see routes.py)."""
    routes.register(app, node)
