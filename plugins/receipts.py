"""Built-in integrity layer: receipts and the transparency log (registered like any third-party plugin).

CLI: `specguard verify`, `specguard log verify`, `specguard log show`.
Routes (need `node.receipts`, a `specguard.attest.receipts.ReceiptIssuer`; when the node has none,
one is created from `node.home` and `node.signing_key` and attached as `node.receipts`):
    GET /specguard/v1/log/checkpoint                      signed checkpoint note (text/plain)
    GET /specguard/v1/log/entries/{i}                     leaf i
    GET /specguard/v1/log/proof/inclusion?index=&size=    audit path
    GET /specguard/v1/log/proof/consistency?old=&new=     consistency proof
    GET /specguard/v1/receipts/{id}                       a stored receipt document
Bad or out-of-range parameters answer 400/404 with an OpenAI-shaped error body.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path
from typing import Any

import click
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse

from specguard.attest import merkle
from specguard.attest.checkpoint import (
    Checkpoint,
    parse_verifier_key,
    split_note,
    verify_checkpoint,
)
from specguard.attest.receipts import (
    ReceiptIssuer,
    ReceiptParseError,
    load_json_file,
    loads_strict,
    verify_receipt,
)
from specguard.attest.tlog import LogRangeError, TransparencyLog
from specguard.errors import SpecguardError, UsageError
from specguard.hookspecs import hookimpl
from specguard.keys import NodeKey, home_dir, parse_public_key

log = logging.getLogger("specguard.plugins.receipts")

API = "/specguard/v1"


class LogFetchError(UsageError):
    """A log endpoint could not be fetched or answered something unexpected (exit code 2)."""


# --- key and file helpers ---------------------------------------------------------------------


def parse_key_arg(value: str) -> bytes:
    """A raw Ed25519 public key from 64 hex digits, a signed-note verifier key, or a file of either/PEM."""
    text = value.strip()
    path = Path(text).expanduser()
    if "+" in text and not path.is_file():
        return parse_verifier_key(text)[1]
    if path.is_file():
        content = path.read_text("utf-8", "replace").strip()
        if "+" in content and "BEGIN" not in content:
            return parse_verifier_key(content)[1]
    return parse_public_key(text)


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


@click.command(name="verify")
@click.argument("receipt", type=click.Path(exists=True, dir_okay=False))
@click.option("--response", "response_path", type=click.Path(exists=True, dir_okay=False),
              help="The response JSON the receipt is for (its top-level 'specguard' key is ignored).")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(exists=True, dir_okay=False),
              help="A signed checkpoint you saved earlier; the receipt's checkpoint must be consistent with it.")
@click.option("--consistency-proof", "consistency_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON consistency proof between --checkpoint and the receipt's checkpoint.")
@click.option("--transcript", "transcript_path", type=click.Path(exists=True, dir_okay=False),
              help="Transcript JSON whose token records are checked against the signed root.")
@click.option("--trusted-key", "trusted_key", multiple=True,
              help="Pinned node key: 64 hex digits, a verifier key name+hash+key, or a file.")
@click.option("--policy", "policy_ref", help="Policy (preset name or TOML file) for evidence plugins.")
@click.option("--attestation-evidence", type=click.Path(exists=True, dir_okay=False))
@click.option("--model-commitment", help="Expected model commitment (hex).")
@click.option("--verifier-key", "verifier_key", multiple=True, help="Consensus verifier key (hex or file).")
@click.option("--quorum", type=click.IntRange(1, 1000), default=None,
              help="Minimum accepting verifier votes a consensus certificate must carry.")
@click.option("--verifier-evidence", "verifier_evidence", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="TEE evidence document of a consensus verifier (from its /specguard/v1/attestation); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_command(receipt: str, response_path: str | None, checkpoint_path: str | None,
                   consistency_path: str | None, transcript_path: str | None, trusted_key: tuple[str, ...],
                   policy_ref: str | None, attestation_evidence: str | None, model_commitment: str | None,
                   verifier_key: tuple[str, ...], quorum: int | None, verifier_evidence: tuple[str, ...],
                   as_json: bool) -> None:
    """Verify a receipt offline: signature, response digest, token root, log inclusion, evidence.

    RECEIPT is a receipt document, or a response whose "specguard"."receipt" holds one (then
    that response is also checked unless --response is given). Exit codes: 0 ok, 3 malformed,
    10 signature, 11 response digest, 12 token records, 13 log, 14 evidence.
    """
    try:
        result = _verify(receipt, response_path, checkpoint_path, consistency_path, transcript_path,
                         trusted_key, policy_ref, attestation_evidence, model_commitment, verifier_key, quorum,
                         verifier_evidence)
    except SpecguardError as exc:
        _emit_failure(exc, as_json)
        raise
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for layer in result.layers:
        click.echo(f"{layer['status']:>9}  {layer['layer']}: {layer['detail']}")
    pinned = "" if result.key_pinned else " (KEY NOT PINNED: pass --trusted-key)"
    click.echo(f"OK receipt {result.receipt_id} signed by {result.key_id}{pinned}")


def _verify(receipt: str, response_path: str | None, checkpoint_path: str | None,
            consistency_path: str | None, transcript_path: str | None, trusted_key: tuple[str, ...],
            policy_ref: str | None, attestation_evidence: str | None, model_commitment: str | None,
            verifier_key: tuple[str, ...], quorum: int | None = None,
            verifier_evidence: tuple[str, ...] = ()) -> Any:
    doc = load_json_file(Path(receipt), "receipt")
    response = None
    if isinstance(doc, dict) and "envelope" not in doc and isinstance(doc.get("specguard"), dict) \
            and "receipt" in doc["specguard"]:
        response, doc = doc, doc["specguard"]["receipt"]
    if response_path:
        response = load_json_file(Path(response_path), "response")
    options: dict[str, Any] = {
        "trusted_keys": [parse_key_arg(k) for k in trusted_key],
        "verifier_keys": [parse_key_arg(k) for k in verifier_key],
        "attestation_evidence": attestation_evidence,
        "model_commitment": model_commitment,
        "quorum": quorum,
        "verifier_evidence": list(verifier_evidence),
        "policy": None,
    }
    if policy_ref:
        from specguard.policies import load_policy

        options["policy"] = load_policy(policy_ref)
    if transcript_path:
        transcript = load_json_file(Path(transcript_path), "transcript")
        if not isinstance(transcript, dict) or not isinstance(transcript.get("tokens"), list):
            raise ReceiptParseError("transcript JSON needs a 'tokens' list", field=transcript_path)
        options["tokens"] = transcript["tokens"]
    if consistency_path:
        options["consistency_proof"] = _hex_list(load_json_file(Path(consistency_path), "consistency proof"),
                                                 consistency_path)
    checkpoint = _read_text(checkpoint_path, "checkpoint") if checkpoint_path else None
    return verify_receipt(doc, trusted_keys=options["trusted_keys"] or None, response=response,
                          checkpoint=checkpoint, options=options)


@click.group(name="log")
def log_group() -> None:
    """Inspect and verify a node's transparency log."""


def _get(url: str, path: str, params: dict[str, Any] | None = None) -> Any:
    # specguard.http: hard deadline for the whole exchange, no env proxies, no redirects, byte cap
    from specguard import http
    from specguard.errors import OutboundError

    try:
        with http.client(timeouts=http.Timeouts.of(30.0), max_connections=1) as client:
            resp = http.request(client, "GET", url.rstrip("/") + API + path, params=params, timeout=30.0)
    except OutboundError as exc:
        raise LogFetchError("cannot reach the log", field=http.redact_url(url), got=exc.summary()) from exc
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
@click.option("--url", help="Base URL of a specguard node (http://host:port).")
@click.option("--db", "db_path", type=click.Path(exists=True, dir_okay=False), help="A local log file.")
@click.option("--checkpoint", "saved_path", type=click.Path(dir_okay=False),
              help="A checkpoint saved earlier; the current one must be consistent with it.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False), help="Save the verified checkpoint here.")
@click.option("--key", "key_arg", help="The node's public key (hex or verifier key string).")
@click.option("--entries", default=1, show_default=True, help="Spot-check inclusion of the last N entries.")
@click.option("--json", "as_json", is_flag=True)
def log_verify_command(url: str | None, db_path: str | None, saved_path: str | None, save_path: str | None,
                       key_arg: str | None, entries: int, as_json: bool) -> None:
    """Check a log: signed checkpoint, consistency with a saved checkpoint, entry inclusion.

    Exit codes: 0 ok, 2 unreachable/usage, 3 malformed, 13 signature/consistency/inclusion failure.
    """
    try:
        report = _log_verify(url, db_path, saved_path, save_path, key_arg, entries)
    except SpecguardError as exc:
        _emit_failure(exc, as_json)
        raise
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in report["checks"]:
            click.echo("      ok  " + line)
        pinned = "" if report["key_pinned"] else " (KEY NOT PINNED: pass --key)"
        click.echo(f"OK log {report['origin']} size {report['tree_size']} root {report['root']}{pinned}")


def _log_verify(url: str | None, db_path: str | None, saved_path: str | None, save_path: str | None,
                key_arg: str | None, entries: int) -> dict[str, Any]:
    if bool(url) == bool(db_path):
        raise UsageError("give exactly one of --url and --db", field="--url/--db")
    saved = _read_text(saved_path, "saved checkpoint") if saved_path and Path(saved_path).exists() else None
    checks: list[str] = []
    local: TransparencyLog | None = None
    if db_path:
        local = _open_local(Path(db_path))
        local.verify_integrity()
        checks.append(f"all {local.size} leaf hashes recomputed from their data")
    source: Any = _RemoteLog(url) if url else local
    key = parse_key_arg(key_arg) if key_arg else None
    pinned = key is not None
    try:
        if local is not None:
            size = local.size
            root = local.root()
            origin = local.origin
            if key is None and size:
                key = _key_from_entry(local.entry(size - 1))
            cp = Checkpoint(origin, size, root)
            checks.append(f"local tree of {size} leaves has root {root.hex()}")
        else:
            note = source.checkpoint()
            text, sigs = split_note(note)
            if key is None:
                from specguard.attest.checkpoint import parse_checkpoint

                unverified = parse_checkpoint(text)
                if unverified.size == 0:
                    raise UsageError("empty log and no --key: nothing to pin the checkpoint to", field="--key")
                key = _key_from_entry(source.entry(unverified.size - 1))
            cp = verify_checkpoint(note, [key])
            checks.append(f"checkpoint signature by {cp.origin}")
        if not pinned:
            log.warning("log key not pinned: trusting the key named in the log's own entries; pass --key")
        if saved is not None:
            if key is None:
                raise UsageError("cannot verify the saved checkpoint without a key", field="--key")
            old = verify_checkpoint(saved, [key], origin=cp.origin)
            if old.size > cp.size:
                raise merkle.LogProofError("log is smaller than a checkpoint it signed earlier (rollback)",
                                           field="tree_size", got=cp.size, expected=f">= {old.size}")
            if old.size == cp.size:
                if old.root != cp.root:
                    raise merkle.LogProofError("same size, different root (split view)", field="root",
                                               got=cp.root.hex(), expected=old.root.hex())
            else:
                proof = local.consistency_proof(old.size, cp.size) if local else source.consistency(old.size, cp.size)
                merkle.verify_consistency(old.size, cp.size, old.root, cp.root, proof)
            checks.append(f"consistent with saved checkpoint of size {old.size}")
        for index in range(max(0, cp.size - max(0, entries)), cp.size):
            data = source.entry(index)
            proof = local.inclusion_proof(index, cp.size) if local else source.inclusion(index, cp.size)
            merkle.verify_inclusion(index, cp.size, merkle.leaf_hash(data), proof, cp.root)
            checks.append(f"entry {index} included")
        if save_path:
            if local is not None:
                raise UsageError("--save needs --url: only the node can sign a checkpoint", field="--save")
            Path(save_path).write_text(note, "utf-8")
            checks.append(f"saved checkpoint to {save_path}")
    finally:
        if local is not None:
            local.close()
    return {"ok": True, "origin": cp.origin, "tree_size": cp.size, "root": cp.root.hex(),
            "key_pinned": pinned, "checks": checks}


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


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(verify_command)
    cli.add_command(log_group)


# --- HTTP routes ------------------------------------------------------------------------------


def issuer_for(node: Any) -> ReceiptIssuer:
    """The node's ReceiptIssuer (`node.receipts`), created from node.home/node.signing_key if absent."""
    issuer = getattr(node, "receipts", None)
    if issuer is None:
        issuer = ReceiptIssuer(Path(getattr(node, "home", None) or home_dir()), NodeKey(node.signing_key))
        node.receipts = issuer
    return issuer


def _error(status: int, message: str, param: str | None, code: str) -> Any:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _int_param(raw: str | None, name: str, default: int | None = None) -> int:
    if raw is None or raw == "":
        if default is None:
            raise LogRangeError(f"query parameter '{name}' is required", field=name)
        return default
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", raw):
        raise LogRangeError(f"'{name}' must be a non-negative decimal integer", field=name, got=raw[:40])
    return int(raw)


@hookimpl
def register_routes(app: Any, node: Any) -> None:
    issuer = issuer_for(node)
    tlog = issuer.log

    def guarded(fn: Any) -> Any:
        try:
            return fn()
        except LogRangeError as exc:
            return _error(400, exc.summary(), exc.field, "invalid_parameter")

    @app.get(API + "/log/checkpoint", response_class=PlainTextResponse)
    def get_checkpoint() -> Any:
        return PlainTextResponse(tlog.checkpoint(), media_type="text/plain; charset=utf-8")

    @app.get(API + "/log/entries/{index}")
    def get_entry(index: str) -> Any:
        def run() -> Any:
            i = _int_param(index, "index")
            if i >= tlog.size:
                return _error(404, f"no log entry {i} (log size {tlog.size})", "index", "entry_not_found")
            data = tlog.entry(i)
            return JSONResponse({"index": i, "leaf_hash": merkle.leaf_hash(data).hex(),
                                 "data": base64.b64encode(data).decode("ascii"), "envelope": json.loads(data)})
        return guarded(run)

    @app.get(API + "/log/proof/inclusion")
    def get_inclusion(request: Request) -> Any:
        def run() -> Any:
            q = request.query_params
            size = _int_param(q.get("size"), "size", tlog.size)
            index = _int_param(q.get("index"), "index")
            if size > tlog.size:
                raise LogRangeError("size is larger than the log", field="size", got=size)
            if index >= size:
                raise LogRangeError("index must be smaller than size", field="index", got=index)
            proof = tlog.inclusion_proof(index, size)
            return JSONResponse({"index": index, "tree_size": size, "leaf_hash": tlog.leaf_hash(index).hex(),
                                 "root": tlog.root(size).hex(), "inclusion_proof": [h.hex() for h in proof],
                                 "checkpoint": tlog.checkpoint(size)})
        return guarded(run)

    @app.get(API + "/log/proof/consistency")
    def get_consistency(request: Request) -> Any:
        def run() -> Any:
            q = request.query_params
            new = _int_param(q.get("new"), "new", tlog.size)
            old = _int_param(q.get("old"), "old")
            if new > tlog.size:
                raise LogRangeError("new is larger than the log", field="new", got=new)
            if old > new:
                raise LogRangeError("old must not exceed new", field="old", got=old)
            proof = tlog.consistency_proof(old, new)
            return JSONResponse({"old": old, "new": new, "old_root": tlog.root(old).hex(),
                                 "new_root": tlog.root(new).hex(), "consistency_proof": [h.hex() for h in proof],
                                 "checkpoint": tlog.checkpoint(new)})
        return guarded(run)

    @app.get(API + "/receipts/{receipt_id}")
    def get_receipt(receipt_id: str) -> Any:
        doc = issuer.get_receipt(receipt_id)
        if doc is None:
            return _error(404, "no receipt with this id", "receipt_id", "receipt_not_found")
        return JSONResponse(doc)
