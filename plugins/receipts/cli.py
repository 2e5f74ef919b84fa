"""Command-line interface of the receipts layer (`register_commands` adds these to `specguard`)."""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from specguard.attest import merkle
from specguard.attest.checkpoint import (
    Checkpoint,
    check_consistency,
    parse_checkpoint,
    split_note,
    verify_checkpoint,
)
from specguard.attest.options import TextDecoder, VerifyOptions
from specguard.attest.receipts.errors import ReceiptParseError, UnpinnedKeyError
from specguard.attest.receipts.parse import load_json_file, loads_strict
from specguard.attest.receipts.verify import verify_receipt
from specguard.attest.tlog import TransparencyLog
from specguard.errors import SpecguardError, UsageError
from specguard.key_args import parse_key_arg
from specguard.keys import parse_public_key
from specguard.outbound_args import cacert_option

log = logging.getLogger("specguard.plugins.receipts")

API = "/specguard/v1"


class LogFetchError(UsageError):
    """A log endpoint could not be fetched or answered something unexpected (exit code 2)."""


# --- key and file helpers ---------------------------------------------------------------------


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what}", field=path, got=str(exc)) from exc


def _hex_list(value: Any, field: str) -> list[bytes]:
    if isinstance(value, dict):
        for name in ("consistency_proof", "inclusion_proof", "proof"):
            if name in value:
                value = value[name]
                break
    if not isinstance(value, list) or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h)
                                               for h in value):
        raise ReceiptParseError("expected a list of 64-hex-digit hashes", field=field)
    return [bytes.fromhex(h) for h in value]


# --- CLI --------------------------------------------------------------------------------------


def _emit_failure(exc: SpecguardError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, **exc.to_dict()}, indent=2))


@dataclass(frozen=True)
class VerifyArgs:
    """The options of `specguard verify` (see its --help), built once by `from_cli`."""

    receipt: str
    response_path: str | None = None
    request_path: str | None = None
    model_ref: str | None = None
    checkpoint_path: str | None = None
    consistency_path: str | None = None
    transcript_path: str | None = None
    trusted_key: tuple[str, ...] = ()
    allow_unpinned: bool = False
    policy_ref: str | None = None
    attestation_evidence: str | None = None
    collateral: str | None = None
    reference_values: str | None = None
    model_commitment: str | None = None
    verifier_key: tuple[str, ...] = ()
    quorum: int | None = None
    verifier_evidence: tuple[str, ...] = ()
    accept_profile: tuple[str, ...] = ()
    default_max_tokens: int | None = None
    context_length: int | None = None
    as_json: bool = False

    def __post_init__(self) -> None:
        for name in ("quorum", "default_max_tokens", "context_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UsageError("must be a positive integer", field="--" + name.replace("_", "-"), got=value)

    @classmethod
    def from_cli(cls, **options: Any) -> VerifyArgs:
        """From the click command's keyword options (repeatable options as tuples)."""
        repeated = ("trusted_key", "verifier_key", "verifier_evidence", "accept_profile")
        return cls(**{**options, **{name: tuple(options.get(name) or ()) for name in repeated}})


@click.command(name="verify")
@click.argument("receipt", type=click.Path(exists=True, dir_okay=False))
@click.option("--response", "response_path", type=click.Path(exists=True, dir_okay=False),
              help="The response JSON the receipt is for (its top-level 'specguard' key is ignored; "
                   "null-valued keys, as the openai SDK writes them, do not matter).")
@click.option("--request", "request_path", type=click.Path(exists=True, dir_okay=False),
              help="The request JSON you sent; its canonical form must be the one the receipt signs.")
@click.option("--model", "model_ref",
              help="Model (directory, file or name) whose tokenizer decodes the signed output ids: the "
                   "response text must be that decoding (stop strings trimmed).")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(exists=True, dir_okay=False),
              help="A signed checkpoint you saved earlier; the receipt's checkpoint must be consistent with it.")
@click.option("--consistency-proof", "consistency_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON consistency proof between --checkpoint and the receipt's checkpoint.")
@click.option("--transcript", "transcript_path", type=click.Path(exists=True, dir_okay=False),
              help="Transcript JSON whose token records are checked against the signed root.")
@click.option("--trusted-key", "--key", "trusted_key", multiple=True,
              help="Pinned node key: 64 hex digits, a verifier key name+hash+key, or a file. Required "
                   "unless --allow-unpinned. (--key is an alias, as in `log verify`.)")
@click.option("--default-max-tokens", "default_max_tokens", type=click.IntRange(1, 2**31 - 1), default=None,
              help="The default max_tokens you accept for a request that omitted it (default 256; also the "
                   "policy's [request_defaults] max_tokens).")
@click.option("--context-length", "context_length", type=click.IntRange(1, 2**31 - 1), default=None,
              help="The node's context length you accept (default: the --model's; also [request_defaults] "
                   "context_length). Needed only when the node cut an omitted max_tokens to fit the context.")
@click.option("--allow-unpinned", is_flag=True,
              help="Accept a signature under the key the receipt itself names (proves only integrity).")
@click.option("--policy", "policy_ref", help="Policy (preset name or TOML file) for evidence plugins; a policy "
                                              "that requires attestation requires the receipt's attestation.")
@click.option("--attestation-evidence", type=click.Path(exists=True, dir_okay=False),
              help="The node's evidence document; requires the receipt's attestation slot.")
@click.option("--collateral", type=click.Path(exists=True),
              help="Collateral (file or directory, e.g. TDX TCB info / AMD CRLs) for the attestation layer.")
@click.option("--reference-values", "reference_values", type=click.Path(exists=True, dir_okay=False),
              help="Reference values (JSON/TOML) the attestation policy pins; `strict` validates nothing without.")
@click.option("--model-commitment", help="Expected model commitment (hex); requires commitment evidence.")
@click.option("--verifier-key", "verifier_key", multiple=True,
              help="Consensus verifier key (hex or file); requires a quorum certificate.")
@click.option("--quorum", type=click.IntRange(1, 1000), default=None,
              help="Minimum accepting verifier votes (default n - f of the n verifier keys, f = (n-1)//3).")
@click.option("--verifier-evidence", "verifier_evidence", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="TEE evidence document of a consensus verifier (from its /specguard/v1/attestation); repeatable.")
@click.option("--accept-profile", "accept_profile", multiple=True, metavar="PROFILE",
              help="Also count consensus votes that rest on this tolerance profile (repeatable), e.g. "
                   "cross-engine:llamacpp. By default only exact and same-engine votes count: a cross-engine vote "
                   "does not rule out a node choosing other tokens within the margin.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_command(**options: Any) -> None:
    """Verify a receipt offline: signature, request/response digests, response text, token root,
    log inclusion, evidence. Every layer an option names is required.

    RECEIPT is a receipt document, or a response whose "specguard"."receipt" holds one (then
    that response is also checked unless --response is given). Exit codes: 0 ok, 2 usage,
    3 malformed, 5 policy, 10 signature (also: no --trusted-key without --allow-unpinned),
    11 request/response digest or response text, 12 token records, 13 log, 14 evidence.
    """
    args = VerifyArgs.from_cli(**options)
    try:
        result = _verify(args)
    except SpecguardError as exc:
        _emit_failure(exc, args.as_json)
        raise
    report = verify_report(result)
    if args.as_json:
        click.echo(json.dumps(report, indent=2))  # evidence.consensus.votes has the votes
        return
    consensus = result.evidence.get("attachment:consensus") if isinstance(result.evidence, dict) else None
    votes = consensus.get("votes", []) if isinstance(consensus, dict) else []
    for layer in report["layers"]:
        click.echo(f"{layer['status']:>9}  {layer['layer']}: {layer['detail']}")
    engine = report["engine"]
    click.echo(f"   engine  {engine['name']} {engine['version'] or '(version not recorded)'}, model file "
               f"{engine['model_file_digest'] or '(not recorded)'}")
    for v in votes:  # what the certificate rests on, vote by vote
        counted = "counted" if v["verdict"] == "accept" and v["profile_accepted"] else "NOT counted"
        click.echo(f"{'vote':>9}  {v['key_id']} {v['verdict']}: {v['summary']} ({counted})")
    pinned = "" if result.key_pinned else " (KEY NOT PINNED: --allow-unpinned)"
    click.echo(f"OK receipt {result.receipt_id} signed by {result.key_id}{pinned}")


#: engine of receipts from before the predicate named one
_UNNAMED_ENGINE = {"name": "specguard", "version": "", "model_file_digest": ""}


def verify_report(result: Any) -> dict[str, Any]:
    """`VerifiedReceipt.to_json()` for people and scripts: the engine the receipt signs, and SIMULATED
    evidence said on the layer's own line (and as `"simulated": true` in the layer and the evidence)."""
    report = result.to_json()
    engine = result.predicate.get("engine")
    report["engine"] = dict(engine) if isinstance(engine, dict) else dict(_UNNAMED_ENGINE)
    simulated = []
    for layer in report["layers"]:
        slot = layer["layer"].split(":", 1)[1] if layer["layer"].startswith("evidence:") else None
        evidence = report["evidence"].get(slot) if slot else None
        signed = result.predicate["evidence"].get(slot) if slot else None
        if any(isinstance(x, dict) and x.get("simulated") is True for x in (evidence, signed)):
            layer["simulated"] = True
            layer["detail"] = "SIMULATED evidence (not from a TEE, proves nothing): " + layer["detail"]
            simulated.append(slot)
    report["simulated"] = simulated
    return report


def hook_evidence_verifier(slot: str, value: Any, statement: dict[str, Any],
                           options: VerifyOptions) -> dict[str, Any] | None:
    """The evidence verifier the CLI gives `verify_receipt`: the plugins' `verify_evidence` hook."""
    from specguard.plugin_manager import load_plugins

    return load_plugins().hook.verify_evidence(slot=slot, value=value, statement=statement, options=options)


def canonical_request(path: str) -> dict[str, Any]:
    """The request file as the node signs it: parsed by the server's request model (chat when it has
    "messages", else completion), every default filled in (`dump_request`)."""
    from pydantic import ValidationError as PydanticError

    from specguard.openai.schema import ChatCompletionRequest, CompletionRequest, dump_request

    data = Path(path).read_bytes()
    obj = loads_strict(data, "request")
    if not isinstance(obj, dict):
        raise ReceiptParseError("request must be a JSON object", field=path, got=type(obj).__name__)
    model = ChatCompletionRequest if "messages" in obj else CompletionRequest
    try:
        return dump_request(model.model_validate_json(data))
    except PydanticError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        raise ReceiptParseError("request file is not a valid " + ("chat " if "messages" in obj else "") +
                                "completion request", field=".".join(str(p) for p in first.get("loc", ())) or path,
                                got=str(first.get("msg", exc))[:200]) from exc


def _load(model_ref: str) -> Any:
    """The model for `--model`: a GGUF through the llama.cpp runtime (its tokenizer from the file's
    metadata, no torch weights: the same tokenizer either runtime uses), anything else through torch."""
    from specguard.models import load_model, resolve

    runtime = "llamacpp" if resolve(model_ref)[0] == "gguf" else "torch"
    return load_model(model_ref, runtime=runtime)


def _request_prompt_ids(model: Any, request: dict[str, Any]) -> list[int]:
    """The request through the model's tokenizer and chat template, as the node does (server prompting)."""
    from specguard.openai import prompting

    return prompting.prompt_ids(model, prompting.parse_request(request))


def _expected_defaults(policy: Any, model: Any, max_tokens: int | None, context_length: int | None) -> Any:
    """Options first, then the policy's [request_defaults], then 256 tokens and the --model's context."""
    from specguard.attest.request_defaults import ExpectedDefaults

    pins = policy.request_defaults if policy is not None else ExpectedDefaults()
    table = {"max_tokens": pins.max_tokens if max_tokens is None else max_tokens,
             "context_length": context_length or pins.context_length}
    return ExpectedDefaults.from_policy_section({k: v for k, v in table.items() if v is not None},
                                                context_length=model.max_context if model else None)


def _verify(args: VerifyArgs) -> Any:
    doc, response = _receipt_and_response(args)
    policy = None
    if args.policy_ref or args.reference_values:
        from specguard.policies import evidence_policy

        policy = evidence_policy(args.policy_ref, reference_values=args.reference_values)
    tokens = _transcript_tokens(args.transcript_path) if args.transcript_path else None
    consistency = None
    if args.consistency_path:
        consistency = _hex_list(load_json_file(Path(args.consistency_path), "consistency proof"),
                                args.consistency_path)
    model = _load(args.model_ref) if args.model_ref is not None else None
    request = canonical_request(args.request_path) if args.request_path else None
    options = VerifyOptions(
        trusted_keys=tuple(parse_key_arg(k) for k in args.trusted_key),
        allow_unpinned=args.allow_unpinned,
        response=response,
        request=request,
        decoder=TextDecoder(decode=model.decode, tokenizer_digest=model.tokenizer_digest) if model else None,
        prompt_ids=_request_prompt_ids(model, request) if model is not None and request is not None else None,
        expected_defaults=_expected_defaults(policy, model, args.default_max_tokens, args.context_length),
        tokens=tokens,
        checkpoint=_read_text(args.checkpoint_path, "checkpoint") if args.checkpoint_path else None,
        consistency_proof=tuple(consistency) if consistency is not None else None,
        policy=policy,
        attestation_evidence=args.attestation_evidence,
        collateral=args.collateral,
        model_commitment=args.model_commitment,
        verifier_keys=tuple(parse_key_arg(k) for k in args.verifier_key),
        quorum=args.quorum,
        verifier_evidence=args.verifier_evidence,
        accept_profiles=args.accept_profile,
    )
    return verify_receipt(doc, options, evidence_verifier=hook_evidence_verifier)


def _receipt_and_response(args: VerifyArgs) -> tuple[Any, Any]:
    """The receipt document and the response to check: RECEIPT may be a response holding its receipt;
    --response replaces that response."""
    doc = load_json_file(Path(args.receipt), "receipt")
    response = None
    if isinstance(doc, dict) and "envelope" not in doc and isinstance(doc.get("specguard"), dict) \
            and "receipt" in doc["specguard"]:
        response, doc = doc, doc["specguard"]["receipt"]
    if args.response_path:
        response = load_json_file(Path(args.response_path), "response")
    if args.model_ref is not None and response is None:
        raise UsageError("--model checks the response text: give the response (--response, or a response file "
                         "as RECEIPT)", field="--model")
    return doc, response


def _transcript_tokens(path: str) -> list[Any]:
    transcript = load_json_file(Path(path), "transcript")
    if not isinstance(transcript, dict) or not isinstance(transcript.get("tokens"), list):
        raise ReceiptParseError("transcript JSON needs a 'tokens' list", field=path)
    return transcript["tokens"]


@click.group(name="log")
def log_group() -> None:
    """Inspect and verify a node's transparency log."""


def _get(url: str, path: str, params: dict[str, Any] | None = None) -> Any:
    # specguard.web.http: hard deadline for the whole exchange, no env proxies, no redirects, byte cap
    from specguard.errors import OutboundError
    from specguard.web import http

    try:
        with http.client(timeouts=http.Timeouts.of(30.0), max_connections=1, cacert=http.cacert_for(url)) as client:
            resp = http.request(client, "GET", url.rstrip("/") + API + path, params=params, timeout=30.0)
    except OutboundError as exc:
        raise LogFetchError("cannot reach the log", field=http.redact_url(url), got=http.failure_reason(exc)) from exc
    if resp.status_code != 200:
        raise LogFetchError("log endpoint answered an error", field=path, got=f"{resp.status_code} {resp.text[:200]}")
    if path.endswith("/checkpoint"):
        return resp.text
    return loads_strict(resp.content, path)


class _RemoteLog:
    def __init__(self, url: str) -> None:
        self.url = url

    def checkpoint(self) -> str:
        return _get(self.url, "/log/checkpoint")

    def current(self, key: bytes | None, checks: list[str]) -> tuple[Checkpoint, bytes | None, str]:
        """(the node's signed checkpoint verified under `key`, the key, the note); unpinned: the key the
        log's last entry names."""
        note = self.checkpoint()
        text, _ = split_note(note)
        if key is None:
            unverified = parse_checkpoint(text)
            if unverified.size == 0:
                raise UsageError("empty log and no --key: nothing to pin the checkpoint to", field="--key")
            key = _key_from_entry(self.entry(unverified.size - 1))
        cp = verify_checkpoint(note, [key])
        checks.append(f"checkpoint signature by {cp.origin}")
        return cp, key, note

    def consistency(self, old: int, new: int) -> list[bytes]:
        return _hex_list(_get(self.url, "/log/proof/consistency", {"old": old, "new": new}), "consistency_proof")

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return _hex_list(_get(self.url, "/log/proof/inclusion", {"index": index, "size": size}), "inclusion_proof")

    def entry(self, index: int) -> bytes:
        body = _get(self.url, f"/log/entries/{index}")
        try:
            return base64.b64decode(body["data"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise LogFetchError("entry has no base64 'data'", field=f"entries/{index}") from exc


def _key_from_entry(data: bytes) -> bytes:
    """The node key a logged envelope's statement names (used only when no key is pinned)."""
    try:
        env = loads_strict(data, "entry")
        payload = loads_strict(base64.b64decode(env["payload"], validate=True), "statement")
        return parse_public_key(payload["predicate"]["node"]["public_key"])
    except (KeyError, TypeError, ValueError, SpecguardError) as exc:
        raise UsageError("no --key given and the last log entry names no node key; pass --key",
                         field="--key") from exc


@log_group.command(name="verify")
@cacert_option
@click.option("--url", help="Base URL of a specguard node (http://host:port).")
@click.option("--db", "db_path", type=click.Path(exists=True, dir_okay=False), help="A local log file.")
@click.option("--checkpoint", "saved_path", type=click.Path(dir_okay=False),
              help="A checkpoint saved earlier; the current one must be consistent with it.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False), help="Save the verified checkpoint here.")
@click.option("--trusted-key", "--key", "key_arg",
              help="Pinned node key (hex, verifier key string or file), as in `verify` (--key is an alias). "
                   "Required unless --allow-unpinned.")
@click.option("--allow-unpinned", is_flag=True,
              help="Trust the key the log's own newest entry names (proves only self-consistency).")
@click.option("--entries", default=1, show_default=True, help="Spot-check inclusion of the last N entries.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def log_verify_command(url: str | None, db_path: str | None, saved_path: str | None, save_path: str | None,
                       key_arg: str | None, entries: int, as_json: bool, allow_unpinned: bool = False) -> None:
    """Check a log: signed checkpoint, consistency with a saved checkpoint, entry inclusion.

    Exit codes: 0 ok, 2 unreachable/usage, 3 malformed, 10 no pinned key (without --allow-unpinned),
    13 signature/consistency/inclusion failure.
    """
    try:
        if not key_arg and not allow_unpinned:
            raise UnpinnedKeyError("no trusted node key given: a checkpoint signed by the key the log names "
                                   "proves nothing; pin the node key (--trusted-key) or pass --allow-unpinned",
                                   field="trusted_keys", got=0, expected=">= 1 pinned key")
        report = _log_verify(url, db_path, saved_path, save_path, key_arg, entries)
    except SpecguardError as exc:
        _emit_failure(exc, as_json)
        raise
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in report["checks"]:
            click.echo("      ok  " + line)
        pinned = "" if report["key_pinned"] else " (KEY NOT PINNED: --allow-unpinned)"
        click.echo(f"OK log {report['origin']} size {report['tree_size']} root {report['root']}{pinned}")


def _log_verify(url: str | None, db_path: str | None, saved_path: str | None, save_path: str | None,
                key_arg: str | None, entries: int) -> dict[str, Any]:
    if bool(url) == bool(db_path):
        raise UsageError("give exactly one of --url and --db", field="--url/--db")
    saved = _read_text(saved_path, "saved checkpoint") if saved_path and Path(saved_path).exists() else None
    checks: list[str] = []
    local = _open_local(Path(db_path)) if db_path else None
    try:
        source: _RemoteLog | _LocalLog
        if local is not None:
            local.verify_integrity()
            checks.append(f"all {local.size} leaf hashes recomputed from their data")
            source = _LocalLog(local)
        else:
            source = _RemoteLog(str(url))
        pinned = bool(key_arg)
        cp, key, note = source.current(parse_key_arg(key_arg) if key_arg else None, checks)
        if not pinned:
            log.warning("log key not pinned: trusting the key named in the log's own entries; pass --trusted-key")
        if saved is not None:
            _check_saved(saved, key, cp, source, checks)
        for index in range(max(0, cp.size - max(0, entries)), cp.size):
            data = source.entry(index)
            merkle.verify_inclusion(index, cp.size, merkle.leaf_hash(data), source.inclusion(index, cp.size), cp.root)
            checks.append(f"entry {index} included")
        if save_path:
            if note is None:
                raise UsageError("--save needs --url: only the node can sign a checkpoint", field="--save")
            Path(save_path).write_text(note, "utf-8")
            checks.append(f"saved checkpoint to {save_path}")
    finally:
        if local is not None:
            local.close()
    return {"ok": True, "origin": cp.origin, "tree_size": cp.size, "root": cp.root.hex(),
            "key_pinned": pinned, "checks": checks}


def _check_saved(saved: str, key: bytes | None, cp: Checkpoint, source: _RemoteLog | _LocalLog,
                 checks: list[str]) -> None:
    """The checkpoint saved earlier (signed by `key`) and the current one `cp` must be consistent."""
    if key is None:
        raise UsageError("cannot verify the saved checkpoint without a key", field="--key")
    old = verify_checkpoint(saved, [key], origin=cp.origin)
    proof = None
    if 0 < old.size < cp.size:  # a proof from the empty tree is empty (RFC 9162)
        proof = source.consistency(old.size, cp.size)
    check_consistency(old, cp, proof)
    checks.append(f"consistent with saved checkpoint of size {old.size}")


class _LocalLog:
    """A local log file, read like `_RemoteLog`: its tree is recomputed here, so nothing is signed."""

    def __init__(self, tlog: TransparencyLog) -> None:
        self.tlog = tlog

    def current(self, key: bytes | None, checks: list[str]) -> tuple[Checkpoint, bytes | None, str | None]:
        """(the local tree as a checkpoint, the key, no signed note); unpinned: the last entry's key."""
        size, root = self.tlog.size, self.tlog.root()
        if key is None and size:
            key = _key_from_entry(self.tlog.entry(size - 1))
        checks.append(f"local tree of {size} leaves has root {root.hex()}")
        return Checkpoint(self.tlog.origin, size, root), key, None

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self.tlog.consistency_proof(old, new)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.tlog.inclusion_proof(index, size)

    def entry(self, index: int) -> bytes:
        return self.tlog.entry(index)


def _open_local(path: Path) -> TransparencyLog:
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise UsageError("not a specguard log database", field=str(path), got=str(exc)) from exc
    if row is None:
        raise UsageError("log database has no origin", field=str(path))
    return TransparencyLog(path, row[0])


@log_group.command(name="show")
@cacert_option
@click.option("--url", help="Base URL of a specguard node.")
@click.option("--db", "db_path", type=click.Path(exists=True, dir_okay=False), help="A local log file.")
@click.option("--entry", "entry_index", type=int, help="Print this entry's envelope JSON.")
def log_show_command(url: str | None, db_path: str | None, entry_index: int | None) -> None:
    """Print a log's current checkpoint (or one entry)."""
    if bool(url) == bool(db_path):
        raise UsageError("give exactly one of --url and --db", field="--url/--db")
    if url:
        remote = _RemoteLog(url)
        if entry_index is None:
            click.echo(remote.checkpoint(), nl=False)
        else:
            click.echo(remote.entry(entry_index).decode("utf-8"))
        return
    local = _open_local(Path(db_path))
    try:
        if entry_index is None:
            click.echo(json.dumps({"origin": local.origin, "tree_size": local.size, "root": local.root().hex()},
                                  indent=2))
        else:
            click.echo(local.entry(entry_index).decode("utf-8"))
    finally:
        local.close()
