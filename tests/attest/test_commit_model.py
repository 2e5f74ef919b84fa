"""Node model commitment: secret persistence, per-response evidence, hooks, route and CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from specguard.attest.commitments import group as g
from specguard.attest.commitments import model as md
from specguard.attest.commitments.pedersen import OpeningError
from specguard.attest.options import VerifyOptions
from specguard.errors import ConfigError, SpecguardError, UsageError, VerificationError
from specguard.plugins import commitments as plugin
from specguard.plugins.commitments.routes import ROUTE
from specguard.transcript import SamplingParams, TokenRecord, Transcript

DIGEST = "sha256:" + "11" * 32
OTHER_DIGEST = "sha256:" + "22" * 32


def make_transcript(model_digest: str = DIGEST, n: int = 4) -> Transcript:
    return Transcript(
        model_name="tiny", model_digest=model_digest, tokenizer_digest="sha256:" + "33" * 32,
        prompt_ids=[1, 2, 3], output_ids=list(range(10, 10 + n)),
        tokens=[TokenRecord(position=i, token_id=10 + i, logprob=-0.1234567 * i) for i in range(n)],
        steps=[], params=SamplingParams(max_tokens=n), finish_reason="length", drafter="none")


NODE_KEY = bytes(range(32))
RID = "0123456789abcdef" * 2
BOUND = {"node_public_key": NODE_KEY, "receipt_id": RID}


def make_node(home: Path, digest: str | None = DIGEST) -> SimpleNamespace:
    model = SimpleNamespace(digest=digest) if digest is not None else None
    return SimpleNamespace(home=home, model=model, key_id="ed25519:0123456789abcdef", public_key_bytes=NODE_KEY)


def make_statement(t: Transcript) -> dict:
    return {"predicate": {"binding_digest": t.binding_digest(), "receipt_id": RID,
                          "node": {"key_id": "ed25519:0123456789abcdef", "public_key": NODE_KEY.hex()}}}


@pytest.fixture(autouse=True)
def _fresh_cache():
    md._cache.clear()
    yield
    md._cache.clear()


def test_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    s1 = md.load_or_create_secret(tmp_path, DIGEST)
    path = md.secret_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    md._cache.clear()
    s2 = md.load_or_create_secret(tmp_path, DIGEST)
    assert (s2.commitment, s2.blinding) == (s1.commitment, s1.blinding)
    assert md.load_secret(tmp_path).commitment == s1.commitment
    assert "blinding" not in repr(s1) and g.encode_scalar(s1.blinding).hex() not in repr(s1)
    doc = md.published_document(s1, "ed25519:ab")
    assert set(doc) == {"suite", "version", "commitment", "key_id"}
    assert g.encode_scalar(s1.blinding).hex() not in json.dumps(doc)


def test_model_change_rotates_and_keeps_old_secret(tmp_path: Path, caplog) -> None:
    old = md.load_or_create_secret(tmp_path, DIGEST)
    md._cache.clear()
    new = md.load_or_create_secret(tmp_path, OTHER_DIGEST)
    assert new.commitment != old.commitment and new.model_digest == OTHER_DIGEST
    archived = tmp_path / "keys" / f"model-commitment-{old.commitment.hex()[:16]}.json"
    assert archived.exists() and "model changed" in caplog.text
    kept = json.loads(archived.read_text())
    md.check_opening(kept["commitment"], kept["model_digest"], kept["blinding"])


def test_bad_secret_files_fail_closed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        md.load_secret(tmp_path)
    md.load_or_create_secret(tmp_path, DIGEST)
    path = md.secret_path(tmp_path)
    good = path.read_text()
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        md.load_secret(tmp_path)
    os.chmod(path, 0o600)
    doc = json.loads(good)
    other = md.load_or_create_secret(tmp_path / "other", DIGEST)
    for bad in ("not json", json.dumps(dict(doc, blinding="00" * 31)),
                json.dumps(dict(doc, commitment=other.commitment.hex())),  # does not open
                json.dumps(dict(doc, version=2)), json.dumps({k: v for k, v in doc.items() if k != "created"}),
                json.dumps([doc])):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            md.load_secret(tmp_path)


def test_response_evidence_verifies_and_binds(tmp_path: Path) -> None:
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    t = make_transcript()
    binding = t.binding_digest()
    ev1 = md.response_evidence(secret, binding, **BOUND)
    ev2 = md.response_evidence(secret, binding, **BOUND)
    assert ev1["response"] != ev2["response"]  # fresh commitment per response: unlinkable by value
    assert set(ev1) == md.EVIDENCE_KEYS and ev1["published"] == secret.commitment.hex()
    summary = md.verify_response_evidence(ev1, binding, **BOUND)
    assert summary["pinned"] is False
    assert md.verify_response_evidence(ev1, binding, secret.commitment.hex(), **BOUND)["pinned"] is True
    with pytest.raises(md.CommitmentEvidenceError, match="another response"):
        md.verify_response_evidence(ev1, make_transcript(n=5).binding_digest(), **BOUND)
    with pytest.raises(md.CommitmentEvidenceError, match="pinned"):
        md.verify_response_evidence(ev1, binding, g.generator_h().hex(), **BOUND)
    # moving the evidence onto another response, context rewritten: the proof fails
    moved = dict(ev1, context=make_transcript(n=5).binding_digest())
    with pytest.raises(VerificationError):
        md.verify_response_evidence(moved, moved["context"], **BOUND)
    # a commitment to another model, with an honest-looking proof, cannot link to the published one
    other = md.load_or_create_secret(tmp_path / "x", OTHER_DIGEST)
    forged = dict(md.response_evidence(other, binding, **BOUND), published=secret.commitment.hex())
    with pytest.raises(VerificationError):
        md.verify_response_evidence(forged, binding, **BOUND)


def test_malformed_evidence_is_a_verification_error(tmp_path: Path) -> None:
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    binding = make_transcript().binding_digest()
    ev = md.response_evidence(secret, binding, **BOUND)
    bad_values = [None, [], {}, dict(ev, extra=1), {k: v for k, v in ev.items() if k != "response"},
                  dict(ev, version=1), dict(ev, version=3), dict(ev, version=True), dict(ev, suite="x"),
                  dict(ev, response="c0" + "00" * 47), dict(ev, response=ev["response"].upper()),
                  dict(ev, published=(bytes([0x80]) + (4).to_bytes(47, "big")).hex()),
                  dict(ev, response=(bytes([0x80]) + (1).to_bytes(47, "big")).hex()),
                  dict(ev, equality_proof=None), dict(ev, equality_proof=dict(ev["equality_proof"], s="ff" * 32)),
                  dict(ev, equality_proof=dict(ev["equality_proof"], t=ev["response"])),
                  dict(ev, response=ev["published"])]
    for bad in bad_values:
        with pytest.raises(VerificationError):
            md.verify_response_evidence(bad, binding, **BOUND)
    for bad_binding in (None, "", 5):
        with pytest.raises(VerificationError):
            md.verify_response_evidence(ev, bad_binding, **BOUND)


def test_check_opening(tmp_path: Path) -> None:
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    c, r = secret.commitment.hex(), g.encode_scalar(secret.blinding).hex()
    assert md.check_opening(c, DIGEST, r, DIGEST)["model_checked"] is True
    with pytest.raises(OpeningError):
        md.check_opening(c, OTHER_DIGEST, r)
    with pytest.raises(OpeningError):
        md.check_opening(c, DIGEST, r, OTHER_DIGEST)
    with pytest.raises(OpeningError):
        md.check_opening(c, DIGEST, g.encode_scalar(secret.blinding + 1).hex())
    with pytest.raises(g.ScalarError):
        md.check_opening(c, DIGEST, g.R.to_bytes(32, "big").hex())
    with pytest.raises(g.PointEncodingError):
        md.check_opening(c[:-2], DIGEST, r)
    with pytest.raises(UsageError):
        md.check_opening(c, "", r)


def test_seal_and_verify_hooks(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    t = make_transcript()
    evidence: dict = {}
    plugin.seal_transcript(transcript=t, evidence=evidence, node=node, receipt_id=RID)
    value = evidence["commitment"]
    statement = make_statement(t)
    assert plugin.verify_evidence(slot="other", value=value, statement=statement, options=VerifyOptions()) is None
    summary = plugin.verify_evidence(slot="commitment", value=value, statement=statement, options=VerifyOptions())
    assert summary["context"] == t.binding_digest()
    pinned = VerifyOptions(model_commitment=value["published"])
    assert plugin.verify_evidence(slot="commitment", value=value, statement=statement, options=pinned)["pinned"]
    with pytest.raises(VerificationError):
        plugin.verify_evidence(slot="commitment", value=value, statement={"predicate": {}}, options=VerifyOptions())
    with pytest.raises(VerificationError):
        plugin.verify_evidence(slot="commitment", value=value, statement=statement,
                               options=VerifyOptions(model_commitment=g.generator_h().hex()))
    with pytest.raises(UsageError):  # typed options refuse a non-string commitment up front
        VerifyOptions(model_commitment=3)
    # no node, or no model: nothing is added
    for n in (None, make_node(tmp_path, None)):
        ev: dict = {}
        plugin.seal_transcript(transcript=t, evidence=ev, node=n, receipt_id=RID)
        assert ev == {}
    # the node refuses to vouch for a transcript of another model
    with pytest.raises(VerificationError):
        plugin.seal_transcript(transcript=make_transcript(OTHER_DIGEST), evidence={}, node=node, receipt_id=RID)


def test_hooks_through_the_plugin_manager(tmp_path: Path) -> None:
    from specguard.plugin_manager import load_plugins

    pm = load_plugins()
    node = make_node(tmp_path)
    t = make_transcript()
    evidence: dict = {}
    plugin.seal_transcript(transcript=t, evidence=evidence, node=node, receipt_id=RID)
    statement = make_statement(t)
    result = pm.hook.verify_evidence(slot="commitment", value=evidence["commitment"], statement=statement,
                                     options=VerifyOptions())
    assert result["slot"] == "commitment"


def test_route_serves_published_commitment(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from support.asgi import app_client

    app = FastAPI()
    node = make_node(tmp_path)
    plugin.register_routes(app=app, node=node)
    with app_client(app) as client:
        resp = client.get(ROUTE)
        assert resp.status_code == 200
        body = resp.json()
        assert body == md.published_document(md.load_secret(tmp_path), node.key_id)
        assert "blinding" not in resp.text
    empty = FastAPI()
    plugin.register_routes(app=empty, node=make_node(tmp_path / "n", None))
    with app_client(empty) as client:
        resp = client.get(ROUTE)
        assert resp.status_code == 404 and resp.json()["error"] == "UsageError"


def _cli() -> click.Group:
    group = click.Group()
    plugin.register_commands(cli=group)
    return group


def test_cli_open_show_disclose(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPECGUARD_HOME", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(_cli(), ["commit", "show"])
    assert isinstance(result.exception, ConfigError)
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    result = runner.invoke(_cli(), ["commit", "show"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["commitment"] == secret.commitment.hex() and "blinding" not in shown
    revealed = json.loads(runner.invoke(_cli(), ["commit", "show", "--reveal"]).output)
    args = ["commit", "open", "--commitment", revealed["commitment"], "--digest", revealed["model_digest"],
            "--blinding", revealed["blinding"]]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0 and json.loads(result.output)["opens"] is True
    bad = runner.invoke(_cli(), args[:-1] + ["00" * 31 + "01"])
    assert isinstance(bad.exception, OpeningError) and bad.exception.exit_code == 4

    transcript = make_transcript(n=6)
    tpath = tmp_path / "t.json"
    tpath.write_text(json.dumps(transcript.to_json()))
    result = runner.invoke(_cli(), ["commit", "disclose", "--transcript", str(tpath), "--positions", "1,4"])
    assert result.exit_code == 0, result.output
    dpath = tmp_path / "d.json"
    dpath.write_text(result.output)
    from specguard.attest.disclosure import token_records_root

    root = token_records_root(transcript.tokens)
    result = runner.invoke(_cli(), ["commit", "verify-disclosure", "--disclosure", str(dpath), "--root", root,
                                    "--tree-size", "6"])
    assert result.exit_code == 0, result.output
    assert [r["position"] for r in json.loads(result.output)["records"]] == [1, 4]
    for bad_pos in ("x", "-1", ""):
        res = runner.invoke(_cli(), ["commit", "disclose", "--transcript", str(tpath), "--positions", bad_pos])
        assert isinstance(res.exception, UsageError)
    res = runner.invoke(_cli(), ["commit", "verify-disclosure", "--disclosure", str(tmp_path / "none.json"),
                                 "--root", root, "--tree-size", "6"])
    assert isinstance(res.exception, SpecguardError)


def test_cli_main_reports_errors_with_exit_codes(tmp_path: Path, monkeypatch, capsys) -> None:
    from specguard.cli import main

    monkeypatch.setenv("SPECGUARD_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["commit", "open", "--commitment", "c0" + "00" * 47, "--digest", DIGEST, "--blinding", "00" * 32])
    assert info.value.code == 3
    assert "identity" in capsys.readouterr().err
