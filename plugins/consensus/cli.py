"""Command-line interface of the consensus layer (`register_commands` adds these to `specguard`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from specguard.consensus.config import default_quorum, key_value
from specguard.consensus.profiles import accepted_set
from specguard.consensus.quorum import (
    QuorumError,
    ReceiptedResponse,
    request_certificate,
    verify_certificate,
)
from specguard.errors import UsageError
from specguard.outbound_args import cacert_option

log = logging.getLogger("specguard.consensus")


# --- CLI --------------------------------------------------------------------------------------


def _load_json(path: str, what: str) -> Any:
    from specguard.attest.receipts.parse import load_json_file

    return load_json_file(Path(path), what)


def _receipt_from(doc: Any) -> dict[str, Any]:
    """A receipt document from a receipt file or a response whose specguard.receipt holds one."""
    if isinstance(doc, dict) and "envelope" not in doc and isinstance(doc.get("specguard"), dict) \
            and isinstance(doc["specguard"].get("receipt"), dict):
        doc = doc["specguard"]["receipt"]
    if not isinstance(doc, dict) or "envelope" not in doc:
        raise UsageError("not a receipt document (no 'envelope')", field="RECEIPT")
    return doc


ACCEPT_PROFILE_HELP = ("Also count accepting votes that rest on this tolerance profile (repeatable), e.g. "
                       "cross-engine:llamacpp. By default only exact and same-engine votes count: a cross-engine "
                       "vote does not rule out a node choosing other tokens within the margin.")


def print_votes(verified_votes: list[dict[str, Any]]) -> None:
    """One stderr line per valid vote: what it rests on (profile, margin, deviations) and whether it counted."""
    for v in verified_votes:
        counted = "counted" if v["verdict"] == "accept" and v["profile_accepted"] else "NOT counted"
        click.echo(f"vote {v['key_id']} {v['verdict']}: {v['summary']} ({counted})", err=True)


def _summaries(cert: dict[str, Any], keys: list[bytes], accepted: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per-vote summaries of a certificate's votes that verify under `keys` (for printing, also on failure)."""
    from specguard.consensus.quorum import vote_summary
    from specguard.consensus.vote import verify_vote
    from specguard.errors import SpecguardError

    out = []
    for obj in cert.get("votes", []) if isinstance(cert, dict) and isinstance(cert.get("votes"), list) else []:
        try:
            out.append(vote_summary(verify_vote(obj, keys), accepted))
        except SpecguardError:
            continue
    return out


@click.group(name="consensus")
def consensus_group() -> None:
    """Consensus verification: independent verifiers re-check a response and co-sign it."""


@dataclass(frozen=True)
class CheckArgs:
    """The options of `specguard consensus check` (see its --help), built once by `from_cli`."""

    receipt: str
    transcript_path: str
    request_path: str
    response_path: str
    verifiers: tuple[str, ...]
    verifier_keys: tuple[str, ...] = ()
    quorum: int | None = None
    timeout: float = 10.0
    out_path: str | None = None
    attach_path: str | None = None
    accept_profile: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.verifier_keys:
            raise UsageError("give the trusted verifier keys with --verifier-key", field="--verifier-key")

    @classmethod
    def from_cli(cls, **options: Any) -> CheckArgs:
        """From the click command's keyword options (repeatable options as tuples)."""
        repeated = ("verifiers", "verifier_keys", "accept_profile")
        return cls(**{**options, **{name: tuple(options.get(name) or ()) for name in repeated}})


@consensus_group.command(name="check")
@cacert_option
@click.argument("receipt", type=click.Path(exists=True, dir_okay=False))
@click.option("--transcript", "transcript_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The response's transcript JSON (Transcript.to_json()).")
@click.option("--request", "request_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The request the client sent (the JSON object the receipt's request digest covers).")
@click.option("--response", "response_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The response body the client received (a \"specguard\" key in it is ignored).")
@click.option("--verifier", "verifiers", multiple=True, required=True, help="Verifier node base URL (repeat).")
@click.option("--verifier-key", "verifier_keys", multiple=True, help="Trusted verifier key: 64 hex or a file.")
@click.option("--quorum", type=int, help="Accepting votes needed (default 2f+1 of n = 3f+1).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per verifier.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the certificate here.")
@click.option("--attach", "attach_path", type=click.Path(dir_okay=False),
              help="Write the receipt document with the certificate attached as receipt['consensus'].")
@click.option("--accept-profile", "accept_profile", multiple=True, metavar="PROFILE", help=ACCEPT_PROFILE_HELP)
def check_command(**options: Any) -> None:
    """Ask verifiers to re-check a receipted response and build a quorum certificate.

    The verifiers check the request (through the pinned tokenizer and template), the response
    body and the transcript against the receipt. Exits 0 when certified, 4 when there is no
    quorum (the certificate, with dissent, is still printed and written).
    """
    from specguard.consensus.config import redact_url

    args = CheckArgs.from_cli(**options)
    doc = _receipt_from(_load_json(args.receipt, "receipt"))
    transcript = _load_json(args.transcript_path, "transcript")
    request = _load_json(args.request_path, "request")
    response = _load_json(args.response_path, "response")
    for value, name in ((transcript, "--transcript"), (request, "--request"), (response, "--response")):
        if not isinstance(value, dict):
            raise UsageError("must be a JSON object", field=name, got=type(value).__name__)
    keys = [key_value(k, "--verifier-key") for k in args.verifier_keys]
    accepted = accepted_set(args.accept_profile)
    q = args.quorum or default_quorum(len(args.verifiers))
    doc = {k: v for k, v in doc.items() if k != "consensus"}
    cert = request_certificate(list(args.verifiers), ReceiptedResponse(transcript, doc, request, response), keys, q,
                               timeout=args.timeout)
    text = json.dumps(cert, indent=2)
    if args.out_path:
        Path(args.out_path).write_text(text + "\n", "utf-8")
    if args.attach_path:
        Path(args.attach_path).write_text(json.dumps({**doc, "consensus": cert}, indent=2) + "\n", "utf-8")
    click.echo(text)
    for d in cert["dissent"]:
        click.echo(f"dissent {d['key_id']} {d['verdict']}: {'; '.join(d['reasons'][:4])}", err=True)
    for f in cert["failures"]:
        click.echo(f"no vote from {redact_url(f['verifier'])}: {f['error']}", err=True)
    print_votes(_summaries(cert, keys, accepted))
    _require_certified(cert, doc, keys, q, accepted, len(args.verifiers))


def _require_certified(cert: dict[str, Any], doc: dict[str, Any], keys: list[bytes], quorum: int,
                       accepted: tuple[str, ...], n_verifiers: int) -> None:
    """Certified means: the signed votes recount to the quorum under the keys and profiles given here."""
    reason = ""
    try:
        verify_certificate(cert, doc["envelope"], keys, quorum, accept_profiles=accepted)
    except QuorumError as exc:
        cert["certified"] = False
        reason = exc.message
    if not cert["certified"]:
        raise QuorumError(f"no quorum: {cert['accepts']} of {n_verifiers} verifiers accepted, need {quorum} counted "
                          f"under the accepted profiles ({', '.join(accepted)})"
                          + (f": {reason}" if reason else ""),
                          field="consensus", got=cert["accepts"], expected=f">= {quorum}")
    click.echo(f"OK certified by {cert['accepts']} of {n_verifiers} verifiers (quorum {quorum})", err=True)


@consensus_group.command(name="verify-certificate")
@click.argument("receipt", type=click.Path(exists=True, dir_okay=False))
@click.option("--certificate", "cert_path", type=click.Path(exists=True, dir_okay=False),
              help="Certificate file (default: RECEIPT's 'consensus' key).")
@click.option("--verifier-key", "verifier_keys", multiple=True, required=True,
              help="Trusted verifier key: 64 hex or a file.")
@click.option("--quorum", type=int, help="Minimum accepting votes (never less than the certificate's own).")
@click.option("--accept-profile", "accept_profile", multiple=True, metavar="PROFILE", help=ACCEPT_PROFILE_HELP)
def verify_certificate_command(receipt: str, cert_path: str | None, verifier_keys: tuple[str, ...],
                               quorum: int | None, accept_profile: tuple[str, ...] = ()) -> None:
    """Verify a quorum certificate offline against trusted verifier keys."""
    raw = _load_json(receipt, "receipt")
    doc = _receipt_from(raw)
    cert = _load_json(cert_path, "certificate") if cert_path else doc.get("consensus")
    if cert is None and isinstance(raw, dict) and isinstance(raw.get("specguard"), dict):
        cert = raw["specguard"].get("consensus")
    if cert is None:
        raise UsageError("no certificate: give --certificate or a receipt with 'consensus'", field="--certificate")
    keys = [key_value(k, "--verifier-key") for k in verifier_keys]
    accepted = accepted_set(accept_profile)
    print_votes(_summaries(cert, keys, accepted))
    verified = verify_certificate(cert, doc["envelope"], keys, quorum, accept_profiles=accepted)
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
@click.option("--prompts", "n_prompts", type=int, default=4, show_default=True, help="Prompts to calibrate on.")
@click.option("--max-tokens", type=int, default=32, show_default=True, help="Tokens generated per prompt.")
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
