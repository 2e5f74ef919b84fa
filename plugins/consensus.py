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
  recounts the votes under options["verifier_keys"].
- CLI: `specguard consensus check | verify-certificate | show-key | calibrate`.
See docs/consensus.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from starlette.requests import Request

from specguard.consensus.quorum import (
    KEY_PATH,
    VERIFY_PATH,
    QuorumError,
    pinned_keys,
    request_certificate,
    verify_certificate,
)
from specguard.errors import ConfigError, PolicyError, SpecguardError, UsageError, VerificationError
from specguard.hookspecs import hookimpl

log = logging.getLogger("specguard.consensus")

ON_NO_QUORUM = ("flag", "withhold", "fail")
MAX_BODY_BYTES = 8 * 1024 * 1024
PIN_FILE = Path("consensus") / "pinned_verifier_keys.json"
FAULT_PATH = "/specguard/v1/test/fault"


class NoQuorumError(SpecguardError):
    """Consensus policy "fail": the response got no quorum certificate (HTTP 503)."""

    http_status = 503


class ConsensusWithheldError(VerificationError):
    """Consensus policy "withhold": the response is withheld because it was not certified (HTTP 422)."""

    http_status = 422


# --- configuration ----------------------------------------------------------------------------


def default_quorum(n: int) -> int:
    """2f + 1 for n = 3f + 1 (n - f with f = floor((n - 1) / 3))."""
    return n - (n - 1) // 3 if n > 0 else 0


@dataclass
class ConsensusConfig:
    """Who to ask, how many must accept, which keys count, and what to do without quorum."""

    verifiers: list[str]
    quorum: int
    trusted_keys: list[bytes] = field(default_factory=list)
    trust_on_first_use: bool = False
    timeout: float = 10.0
    on_no_quorum: str = "flag"


def _key(value: Any, where: str) -> bytes:
    from specguard.plugins.receipts import parse_key_arg

    if not isinstance(value, str):
        raise ConfigError("verifier key must be a string (64 hex digits or a file)", field=where, got=value)
    return parse_key_arg(value)


def consensus_config(node: Any) -> ConsensusConfig | None:
    """The node's consensus settings (command line over policy), or None when no verifiers are set."""
    policy = getattr(node, "policy", None)
    section = policy.section("consensus") if policy is not None else {}
    cons = getattr(node, "consensus", None) or {}
    urls: list[str] = []
    keys: list[bytes] = []
    for i, entry in enumerate(cons.get("verifiers") or section.get("verifiers") or []):
        if isinstance(entry, str):
            urls.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("url"), str):
            urls.append(entry["url"])
            if entry.get("key") is not None:
                keys.append(_key(entry["key"], f"consensus.verifiers[{i}].key"))
        else:
            raise ConfigError("a verifier must be a URL or a table {url, key}", field=f"consensus.verifiers[{i}]",
                              got=entry)
    if not urls:
        return None
    for i, k in enumerate(list(section.get("verifier_keys") or []) + list(cons.get("verifier_keys") or [])):
        keys.append(k if isinstance(k, bytes) else _key(k, f"consensus.verifier_keys[{i}]"))
    quorum = cons.get("quorum") or section.get("quorum") or default_quorum(len(urls))
    on_no = section.get("on_no_quorum", "flag")
    if on_no not in ON_NO_QUORUM:
        raise ConfigError("unknown consensus.on_no_quorum", field="consensus.on_no_quorum", got=on_no,
                          expected=ON_NO_QUORUM)
    if not 1 <= int(quorum) <= len(urls):
        raise ConfigError("consensus quorum must be between 1 and the number of verifiers", field="consensus.quorum",
                          got=quorum, expected=f"1..{len(urls)}")
    return ConsensusConfig(verifiers=urls, quorum=int(quorum), trusted_keys=keys,
                           trust_on_first_use=bool(section.get("trust_on_first_use", False)),
                           timeout=float(section.get("timeout_seconds", 10.0)), on_no_quorum=on_no)


# --- verifier routes --------------------------------------------------------------------------


def _service(node: Any) -> Any:
    from specguard.consensus.service import VerifierService

    service = getattr(node, "verifier_service", None)
    if service is None:
        service = VerifierService.for_node(node)
        node.verifier_service = service
    return service


@hookimpl
def register_routes(app: Any, node: Any) -> None:
    if getattr(node, "role", "serve") != "verifier":
        return
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from specguard.attest.receipts import loads_strict

    service = _service(node)
    log.info("consensus verifier %s ready (model %s)", service.key.key_id, service.model.digest)

    def error(exc: SpecguardError) -> Any:
        status = int(getattr(exc, "http_status", 400))
        return JSONResponse(status_code=status, content={"error": {
            "message": exc.summary(), "type": "invalid_request_error", "param": exc.field,
            "code": type(exc).__name__}})

    @app.get(KEY_PATH)
    def verifier_key() -> Any:
        return JSONResponse(service.public_info())

    @app.post(VERIFY_PATH)
    async def verify(request: Request) -> Any:
        from specguard.consensus.service import VerifyRequestError

        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(VerifyRequestError("request body too large", field="body", got=len(raw),
                                            expected=f"<= {MAX_BODY_BYTES}"))
        try:
            body = loads_strict(raw, "body")
            vote = await run_in_threadpool(service.handle, body)
        except SpecguardError as exc:
            return error(exc)
        return JSONResponse(vote)

    if service.fault is not None:  # only when SPECGUARD_TEST_VERIFIER_BEHAVIOUR is set: tests only
        log.warning("TEST FAULT INJECTION route %s enabled", FAULT_PATH)

        @app.post(FAULT_PATH)
        async def set_fault(request: Request) -> Any:
            try:
                body = loads_strict(await request.body(), "body")
                service.fault.set(body.get("behaviour") if isinstance(body, dict) else None)
            except SpecguardError as exc:
                return error(exc)
            return JSONResponse({"behaviour": service.fault.behaviour})


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


@hookimpl
def verify_evidence(slot: str, value: Any, statement: Any, options: Any) -> dict[str, Any] | None:
    if slot != "consensus":
        return None
    options = dict(options or {})
    keys = [bytes(k) for k in options.get("verifier_keys") or []]
    quorum = int(options.get("quorum") or 0)
    policy = options.get("policy")
    if policy is not None and hasattr(policy, "section"):
        quorum = max(quorum, int(policy.section("consensus").get("quorum") or 0))
    envelope = options.get("envelope")
    receipt = options.get("receipt")
    if envelope is None and isinstance(receipt, dict):
        envelope = receipt.get("envelope")
    predicate = statement.get("predicate", {}) if isinstance(statement, dict) else {}
    binding = predicate.get("binding_digest")
    if not isinstance(binding, str):
        raise QuorumError("statement has no binding digest to check the certificate against",
                          field="predicate.binding_digest")
    if not quorum:
        log.warning("consensus certificate checked against its own quorum; pass a minimum quorum to enforce one")
    model = predicate.get("model") if isinstance(predicate.get("model"), dict) else {}
    verified = verify_certificate(value, envelope, keys, quorum or None, binding_digest=binding,
                                  model_digest=model.get("digest"))
    out = verified.to_json()
    out["receipt_digest_checked"] = envelope is not None
    out.update(_attested_verifiers(verified, options, policy))
    return out


def _attested_verifiers(verified: Any, options: dict[str, Any], policy: Any) -> dict[str, Any]:
    """Check the verifier evidence files given (`--verifier-evidence`) and the policy's
    `[consensus] min_attested_verifiers`: how many accepting votes must come from verifiers whose
    evidence was verified here."""
    from specguard.consensus.quorum import check_verifier_evidence

    documents = list(options.get("verifier_evidence") or [])
    section = policy.section("consensus") if policy is not None and hasattr(policy, "section") else {}
    required = section.get("min_attested_verifiers", 0)
    if isinstance(required, bool) or not isinstance(required, int) or required < 0:
        raise ConfigError("consensus.min_attested_verifiers must be a non-negative integer",
                          field="consensus.min_attested_verifiers", got=required)
    if not documents and not required:
        return {}
    from specguard.policies import evidence_policy

    policy = evidence_policy(policy)
    attested = check_verifier_evidence(verified, documents, policy, at=options.get("at"), now=options.get("now"),
                                       collateral=options.get("collateral"))
    distinct = sorted({a["key_id"] for a in attested})
    if len(distinct) < required:
        raise PolicyError("too few accepting verifiers with verified TEE evidence",
                          field="consensus.min_attested_verifiers", got=len(distinct), expected=f">= {required}")
    return {"attested_verifiers": attested}


# --- CLI --------------------------------------------------------------------------------------


def _load_json(path: str, what: str) -> Any:
    from specguard.attest.receipts import load_json_file

    return load_json_file(Path(path), what)


def _receipt_from(doc: Any) -> dict[str, Any]:
    """A receipt document from a receipt file or a response whose specguard.receipt holds one."""
    if isinstance(doc, dict) and "envelope" not in doc and isinstance(doc.get("specguard"), dict) \
            and isinstance(doc["specguard"].get("receipt"), dict):
        doc = doc["specguard"]["receipt"]
    if not isinstance(doc, dict) or "envelope" not in doc:
        raise UsageError("not a receipt document (no 'envelope')", field="RECEIPT")
    return doc


@click.group(name="consensus")
def consensus_group() -> None:
    """Consensus verification: independent verifiers re-check a response and co-sign it."""


@consensus_group.command(name="check")
@click.argument("receipt", type=click.Path(exists=True, dir_okay=False))
@click.option("--transcript", "transcript_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The response's transcript JSON (Transcript.to_json()).")
@click.option("--verifier", "verifiers", multiple=True, required=True, help="Verifier node base URL (repeat).")
@click.option("--verifier-key", "verifier_keys", multiple=True, help="Trusted verifier key: 64 hex or a file.")
@click.option("--quorum", type=int, help="Accepting votes needed (default 2f+1 of n = 3f+1).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per verifier.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the certificate here.")
@click.option("--attach", "attach_path", type=click.Path(dir_okay=False),
              help="Write the receipt document with the certificate attached as receipt['consensus'].")
def check_command(receipt: str, transcript_path: str, verifiers: tuple[str, ...], verifier_keys: tuple[str, ...],
                  quorum: int | None, timeout: float, out_path: str | None, attach_path: str | None) -> None:
    """Ask verifiers to re-check a receipted response and build a quorum certificate.

    Exits 0 when certified, 4 when there is no quorum (the certificate, with dissent, is still
    printed and written).
    """
    doc = _receipt_from(_load_json(receipt, "receipt"))
    transcript = _load_json(transcript_path, "transcript")
    if not isinstance(transcript, dict):
        raise UsageError("transcript must be a JSON object", field="--transcript")
    keys = [_key(k, "--verifier-key") for k in verifier_keys]
    if not keys:
        raise UsageError("give the trusted verifier keys with --verifier-key", field="--verifier-key")
    q = quorum or default_quorum(len(verifiers))
    doc = {k: v for k, v in doc.items() if k != "consensus"}
    cert = request_certificate(list(verifiers), transcript, doc, keys, q, timeout=timeout)
    text = json.dumps(cert, indent=2)
    if out_path:
        Path(out_path).write_text(text + "\n", "utf-8")
    if attach_path:
        Path(attach_path).write_text(json.dumps({**doc, "consensus": cert}, indent=2) + "\n", "utf-8")
    click.echo(text)
    for d in cert["dissent"]:
        click.echo(f"dissent {d['key_id']} {d['verdict']}: {'; '.join(d['reasons'][:4])}", err=True)
    for f in cert["failures"]:
        click.echo(f"no vote from {f['verifier']}: {f['error']}", err=True)
    if not cert["certified"]:
        raise QuorumError(f"no quorum: {cert['accepts']} of {len(verifiers)} verifiers accepted, need {q}",
                          field="consensus", got=cert["accepts"], expected=f">= {q}")
    click.echo(f"OK certified by {cert['accepts']} of {len(verifiers)} verifiers (quorum {q})", err=True)


@consensus_group.command(name="verify-certificate")
@click.argument("receipt", type=click.Path(exists=True, dir_okay=False))
@click.option("--certificate", "cert_path", type=click.Path(exists=True, dir_okay=False),
              help="Certificate file (default: RECEIPT's 'consensus' key).")
@click.option("--verifier-key", "verifier_keys", multiple=True, required=True,
              help="Trusted verifier key: 64 hex or a file.")
@click.option("--quorum", type=int, help="Minimum accepting votes (never less than the certificate's own).")
def verify_certificate_command(receipt: str, cert_path: str | None, verifier_keys: tuple[str, ...],
                               quorum: int | None) -> None:
    """Verify a quorum certificate offline against trusted verifier keys."""
    raw = _load_json(receipt, "receipt")
    doc = _receipt_from(raw)
    cert = _load_json(cert_path, "certificate") if cert_path else doc.get("consensus")
    if cert is None and isinstance(raw, dict) and isinstance(raw.get("specguard"), dict):
        cert = raw["specguard"].get("consensus")
    if cert is None:
        raise UsageError("no certificate: give --certificate or a receipt with 'consensus'", field="--certificate")
    verified = verify_certificate(cert, doc["envelope"], [_key(k, "--verifier-key") for k in verifier_keys], quorum)
    click.echo(json.dumps(verified.to_json(), indent=2))
    click.echo(f"OK quorum certificate: {len(verified.accepted_by)} accepting votes, quorum {verified.quorum}",
               err=True)


@consensus_group.command(name="show-key")
@click.option("--home", type=click.Path(file_okay=False), help="Node home (default $SPECGUARD_HOME).")
def show_key_command(home: str | None) -> None:
    """Print this node's verifier public key (created on first use): give it to clients as --verifier-key."""
    from specguard.keys import load_or_create_node_key

    key = load_or_create_node_key(Path(home) if home else None)
    click.echo(json.dumps({"key_id": key.key_id, "public_key": key.public_hex}))


@consensus_group.command(name="calibrate")
@click.option("--model", "model_ref", help="Model reference (default: the embedded model).")
@click.option("--prompts", "n_prompts", type=int, default=4, show_default=True)
@click.option("--max-tokens", type=int, default=32, show_default=True)
def calibrate_command(model_ref: str | None, n_prompts: int, max_tokens: int) -> None:
    """Measure honest re-derivation drift (threads, batch shapes, dtypes) to set margin and tolerance."""
    from specguard.consensus.calibrate import calibrate, recommended
    from specguard.models import load_model

    model = load_model(model_ref)
    questions = ["Explain photosynthesis briefly.", "Write a haiku about the sea.", "What is 17 times 23?",
                 "List three uses of copper.", "Why is the sky blue?", "Name two prime numbers."]
    prompts = [model.encode_chat([{"role": "user", "content": q}]) for q in questions[: max(1, n_prompts)]]
    report = calibrate(model, prompts, max_tokens=max_tokens)
    click.echo(json.dumps({**report.to_json(), "recommended": recommended(report)}, indent=2))


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(consensus_group)
