"""DSSE envelopes, receipts and offline verification: every changed field or byte is caught and named."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from specguard.attest import dsse
from specguard.attest.checkpoint import verify_checkpoint
from specguard.attest.options import VerifyOptions
from specguard.attest.receipts import (
    PREDICATE_TYPE_V2,
    RESPONSE_DIGEST_V3,
    EvidenceError,
    ReceiptIssuer,
    ReceiptParseError,
    SubjectDigestError,
    TokenRootError,
    UnpinnedKeyError,
    loads_strict,
    request_digest,
    response_digest,
    token_records_root,
    verify_receipt,
)
from specguard.canonical import canonical_json, json_digest
from specguard.cli import main
from specguard.errors import ConfigError, SpecguardError, VerificationError
from specguard.hookspecs import hookimpl
from specguard.keys import NodeKey, home_dir, load_or_create_node_key
from specguard.plugin_manager import load_plugins
from specguard.transcript import SamplingParams, Step, TokenRecord, Transcript, ids_digest

EXPECTED_CODES = {3, 10, 11, 12, 13}


def make_transcript(n: int = 8) -> Transcript:
    tokens = [TokenRecord(position=i, token_id=1000 + i, logprob=-0.25 * i - 0.0123456789) for i in range(n)]
    steps = [Step(index=0, drafter="ngram", drafted=[1000, 1001, 7], accepted=2, emitted=[1000, 1001, 1002])]
    return Transcript(
        model_name="tiny", model_digest="sha256:" + "a" * 64, tokenizer_digest="sha256:" + "b" * 64,
        prompt_ids=[1, 2, 3], output_ids=[t.token_id for t in tokens], tokens=tokens, steps=steps,
        params=SamplingParams(max_tokens=n, temperature=0.7, seed=42), finish_reason="length", drafter="ngram",
    )


RESPONSE = {"id": "cmpl-1", "object": "text_completion", "model": "tiny",
            "choices": [{"index": 0, "text": "hello world", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 8}}
REQUEST = {"model": "tiny", "prompt": "hi", "max_tokens": 8, "temperature": 0.7, "seed": 42}


class _Policy:
    name = "dev"
    digest = "sha256:" + "c" * 64


@pytest.fixture()
def issued(tmp_path: Path) -> tuple[ReceiptIssuer, NodeKey, Transcript, dict[str, Any]]:
    key = load_or_create_node_key(tmp_path)
    issuer = ReceiptIssuer(tmp_path, key)
    t = make_transcript()
    for _ in range(4):
        issuer.issue(t, REQUEST, RESPONSE, {}, _Policy())
    doc = issuer.issue(t, REQUEST, RESPONSE, {}, _Policy())
    yield issuer, key, t, doc
    issuer.close()


# --- keys ---------------------------------------------------------------------------------------


def test_node_key_created_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECGUARD_HOME", str(tmp_path / "home"))
    assert home_dir() == tmp_path / "home"
    key = load_or_create_node_key(home_dir())
    path = tmp_path / "home" / "keys" / "node.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_node_key(home_dir())
    assert again.public_bytes == key.public_bytes and len(key.public_bytes) == 32
    assert key.key_id.startswith("ed25519:") and len(key.key_id) == 8 + 16
    assert "PRIVATE" not in repr(key) and key.public_hex not in repr(key)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_node_key(home_dir())


# --- DSSE ---------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_spec_example() -> None:
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_envelope_round_trip_and_strictness() -> None:
    key = NodeKey(Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
    other = NodeKey(Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
    env = dsse.sign_envelope(b'{"a":1}', key)
    assert dsse.verify_envelope(dsse.parse_envelope(env), [key.public_bytes]) == key.key_id
    with pytest.raises(dsse.SignatureError, match="no signature by a trusted key"):
        dsse.verify_envelope(dsse.parse_envelope(env), [other.public_bytes])
    forged = dict(env, signatures=[{"keyid": other.key_id, "sig": env["signatures"][0]["sig"]}])
    with pytest.raises(dsse.SignatureError, match="does not verify"):
        dsse.verify_envelope(dsse.parse_envelope(forged), [other.public_bytes])
    for bad, field in [
        (dict(env, extra=1), "envelope"),
        (dict(env, payload="eyJhIjoxfQ"), "envelope.payload"),  # unpadded
        (dict(env, payload="eyJhIjoxfR=="), "envelope.payload"),  # non-canonical final bits
        (dict(env, signatures=[]), "envelope.signatures"),
        (dict(env, signatures=[{"keyid": 1, "sig": "AA=="}]), "envelope.signatures[0].keyid"),
    ]:
        with pytest.raises(dsse.EnvelopeParseError) as err:
            dsse.parse_envelope(bad)
        assert err.value.field == field


# --- receipts: happy paths ----------------------------------------------------------------------


def test_receipt_statement_fields(issued) -> None:
    issuer, key, t, doc = issued
    statement = json.loads(base64.b64decode(doc["envelope"]["payload"]))
    assert base64.b64decode(doc["envelope"]["payload"]) == canonical_json(statement)
    secret = doc["disclosure"]["secret"]
    assert statement["predicateType"] == PREDICATE_TYPE_V2 and secret == t.salt
    assert statement["subject"] == [{"name": "response", "digest": {
        "sha256": response_digest(RESPONSE, RESPONSE_DIGEST_V3, secret)}}]
    assert p_public_has_no_content(statement["predicate"])
    p = {**statement["predicate"], **doc["disclosure"]["sealed"]}
    assert p["binding_digest"] == t.binding_digest()
    assert p["request_digest"] == request_digest(REQUEST, secret) != json_digest(REQUEST)
    assert p["output_ids_digest"] == ids_digest(t.output_ids) and p["prompt_ids_digest"] == ids_digest([1, 2, 3])
    assert p["token_records_root"] == token_records_root(t.tokens)
    assert p["drafter"] == {"name": "ngram", "trusted": False, "drafted_tokens": 3, "accepted_tokens": 2,
                            "acceptance_rate": 0.666667, "mean_accepted_tokens": 3.0, "steps": 1}
    assert p["node"] == {"key_id": key.key_id, "public_key": key.public_hex}
    assert p["policy"] == {"name": "dev", "digest": _Policy.digest}
    assert p["params"]["seed"] == 42 and p["receipt_id"] == doc["receipt_id"]
    assert doc["log"]["index"] == 4 and doc["log"]["tree_size"] == 5
    public = {k: v for k, v in doc.items() if k != "disclosure"}
    assert issuer.get_receipt(doc["receipt_id"]) == public  # the log serves no secret
    assert response_digest(dict(RESPONSE, specguard={"receipt": doc})) == response_digest(RESPONSE)


def p_public_has_no_content(predicate: dict[str, Any]) -> bool:
    return not {"params", "finish_reason", "token_records_count", "drafter", "prompt_ids_digest",
                "output_ids_digest", "token_records_root"} & set(predicate)


def test_verify_pinned_unpinned_and_after_restart(issued, tmp_path: Path) -> None:
    issuer, key, t, doc = issued
    v = verify_receipt(doc, VerifyOptions(tokens=t), trusted_keys=[key.public_bytes], response=RESPONSE)
    assert v.key_pinned and [(x["layer"], x["status"]) for x in v.layers] == [
        ("parse", "ok"), ("signature", "ok"), ("sealed", "ok"), ("response", "ok"), ("token_records", "ok"),
        ("log_inclusion", "ok")]
    with pytest.raises(UnpinnedKeyError) as err:  # no pinned key: fail unless explicitly allowed
        verify_receipt(doc)
    assert err.value.exit_code == 10 and err.value.field == "trusted_keys"
    loose = verify_receipt(doc, VerifyOptions(allow_unpinned=True))
    assert not loose.key_pinned and "key NOT pinned" in loose.layers[1]["detail"]
    assert loose.to_json()["key_pinned"] is False
    issuer.close()
    reopened = ReceiptIssuer(tmp_path, key)
    assert reopened.get_receipt(doc["receipt_id"]) == {k: v for k, v in doc.items() if k != "disclosure"}
    assert reopened.get_receipt("../etc") is None
    later = reopened.issue(t, REQUEST, RESPONSE, {}, _Policy())
    proof = reopened.log.consistency_proof(5, 6)
    # the old receipt against the newer checkpoint, with a consistency proof
    verify_receipt(doc, VerifyOptions(consistency_proof=proof), trusted_keys=[key.public_bytes],
                   checkpoint=later["log"]["checkpoint"])
    with pytest.raises(VerificationError) as err:
        verify_receipt(doc, trusted_keys=[key.public_bytes], checkpoint=later["log"]["checkpoint"])
    assert err.value.exit_code == 13 and err.value.field == "consistency_proof"
    verify_receipt(later, trusted_keys=[key.public_bytes], checkpoint=reopened.log.checkpoint())
    reopened.close()


# --- receipts: tampering ------------------------------------------------------------------------


def _mutations(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a JSON value, each changed in one way: (path, mutated whole value)."""
    out: list[tuple[str, Any]] = []

    def changed(leaf: Any) -> Any:
        if isinstance(leaf, bool):
            return not leaf
        if isinstance(leaf, int):
            return leaf + 1
        if isinstance(leaf, float):
            return leaf + 0.5
        if isinstance(leaf, str):
            return leaf[:-1] + ("0" if leaf[-1:] != "0" else "1") if leaf else "x"
        if leaf is None:
            return 0
        return None

    def walk(node: Any, prefix: str, setter) -> None:
        if isinstance(node, dict):
            if not node:
                out.append((prefix, setter({"x": 1})))
            for k in node:
                walk(node[k], f"{prefix}.{k}", lambda v, k=k, node=node: setter({**node, k: v}))
            out.append((prefix + "{+key}", setter({**node, "added": 1})))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{prefix}[{i}]", lambda v, i=i, node=node: setter(node[:i] + [v] + node[i + 1:]))
            out.append((prefix + "[+item]", setter(node + [node[-1] if node else 0])))
        else:
            out.append((prefix, setter(changed(node))))

    walk(value, path, lambda v: v)
    return out


def test_every_statement_field_change_breaks_the_signature(issued) -> None:
    _, key, _, doc = issued
    statement = json.loads(base64.b64decode(doc["envelope"]["payload"]))
    mutations = _mutations(statement)
    assert len(mutations) > 30
    for path, mutated in mutations:
        bad = copy.deepcopy(doc)
        bad["envelope"]["payload"] = base64.b64encode(canonical_json(mutated)).decode()
        with pytest.raises(dsse.SignatureError) as err:
            verify_receipt(bad, trusted_keys=[key.public_bytes], response=RESPONSE)
        assert err.value.exit_code == 10 and err.value.field, path
        # without a pinned key the statement's own key is used; the old signature still fails
        with pytest.raises(SpecguardError) as err:
            verify_receipt(bad, VerifyOptions(allow_unpinned=True), response=RESPONSE)
        assert err.value.exit_code in {3, 10}, path


def test_resigned_statement_is_rejected_by_the_pinned_key(issued) -> None:
    _, key, _, doc = issued
    attacker = NodeKey(Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    bad = copy.deepcopy(doc)
    bad["envelope"] = dsse.sign_envelope(base64.b64decode(doc["envelope"]["payload"]), attacker)
    with pytest.raises(dsse.SignatureError, match="no signature by a trusted key"):
        verify_receipt(bad, trusted_keys=[key.public_bytes])


def test_every_receipt_document_field_change_fails(issued) -> None:
    _, key, _, doc = issued
    outer = {k: v for k, v in doc.items()}
    for path, mutated in _mutations(outer, "receipt"):
        with pytest.raises(SpecguardError) as err:
            verify_receipt(mutated, trusted_keys=[key.public_bytes], response=RESPONSE)
        assert err.value.exit_code in EXPECTED_CODES and (err.value.field or err.value.message), path


def test_every_byte_flip_of_the_receipt_fails(issued) -> None:
    _, key, _, doc = issued
    raw = canonical_json(doc)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(SpecguardError) as err:
            verify_receipt(bytes(bad), trusted_keys=[key.public_bytes], response=RESPONSE)
        assert err.value.exit_code in EXPECTED_CODES, (i, err.value)
        assert err.value.field or err.value.message


def test_every_byte_flip_and_field_change_of_the_response_fails(issued) -> None:
    _, key, _, doc = issued
    raw = canonical_json(RESPONSE)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises((ReceiptParseError, SubjectDigestError)) as err:
            verify_receipt(doc, trusted_keys=[key.public_bytes], response=loads_strict(bytes(bad), "response"))
        assert err.value.field in {"response", "statement.subject[0].digest.sha256"}
    for _path, mutated in _mutations(RESPONSE, "response"):
        with pytest.raises(SubjectDigestError, match="does not match the signed subject"):
            verify_receipt(doc, trusted_keys=[key.public_bytes], response=mutated)


@settings(deadline=None, max_examples=200, derandomize=True)
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["receipt_id", "envelope", "log", "payload", "signatures", "index"]), inner, max_size=4),
    max_leaves=12)))
def test_arbitrary_input_raises_only_typed_errors(data: Any) -> None:
    try:
        verify_receipt(data, trusted_keys=[b"\x01" * 32])
    except SpecguardError as exc:
        assert exc.exit_code in EXPECTED_CODES
    else:
        raise AssertionError("arbitrary input verified")


def test_token_records_are_checked(issued) -> None:
    _, key, t, doc = issued
    records = [tok.to_json() for tok in t.tokens]
    verify_receipt(doc, trusted_keys=[key.public_bytes],
                   response=dict(RESPONSE, specguard={"transcript": {"tokens": records}}))
    for i, field in [(3, "logprob"), (5, "token_id"), (0, "position")]:
        bad = copy.deepcopy(records)
        bad[i][field] += 1 if field != "logprob" else 1e-5
        with pytest.raises(TokenRootError) as err:
            verify_receipt(doc, VerifyOptions(tokens=bad), trusted_keys=[key.public_bytes])
        assert err.value.exit_code == 12 and err.value.field == "predicate.token_records_root"
    with pytest.raises(TokenRootError, match="integer position"):
        verify_receipt(doc, VerifyOptions(tokens=[{"position": "0"}]), trusted_keys=[key.public_bytes])


class _EvidencePlugin:
    @hookimpl
    def verify_evidence(self, slot, value, statement, options):
        if slot == "test-ok":
            return {"checked": value}
        if slot == "test-bad":
            raise VerificationError("test evidence does not verify", field="evidence.test-bad")
        return None


def test_evidence_slots(tmp_path: Path) -> None:
    key = load_or_create_node_key(tmp_path)
    issuer = ReceiptIssuer(tmp_path, key)
    pm = load_plugins()
    plugin = _EvidencePlugin()
    pm.register(plugin, name="test-evidence")
    try:
        t = make_transcript(3)
        doc = issuer.issue(t, REQUEST, RESPONSE, {"test-ok": 1, "nobody-claims": {"x": 1}}, _Policy())
        def through_hook(slot, value, statement, options):
            return pm.hook.verify_evidence(slot=slot, value=value, statement=statement, options=options)

        # without an evidence verifier (the pure library alone) no slot counts as verified
        bare = verify_receipt(doc, trusted_keys=[key.public_bytes])
        assert bare.evidence == {"nobody-claims": "unchecked", "test-ok": "unchecked"}
        v = verify_receipt(doc, trusted_keys=[key.public_bytes], evidence_verifier=through_hook)
        assert v.evidence == {"nobody-claims": "unchecked", "test-ok": {"checked": 1}}
        assert ("evidence:nobody-claims", "unchecked") in [(x["layer"], x["status"]) for x in v.layers]
        bad = issuer.issue(t, REQUEST, RESPONSE, {"test-bad": 1}, _Policy())
        with pytest.raises(EvidenceError) as err:
            verify_receipt(bad, trusted_keys=[key.public_bytes], evidence_verifier=through_hook)
        assert err.value.exit_code == 14 and "test-bad" in err.value.message
    finally:
        pm.unregister(plugin)
        issuer.close()


# --- CLI ----------------------------------------------------------------------------------------


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_cli_verify_exit_codes(issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    issuer, key, t, doc = issued
    receipt = tmp_path / "receipt.json"
    response = tmp_path / "response.json"
    receipt.write_bytes(canonical_json(doc))
    response.write_text(json.dumps(RESPONSE, indent=2))
    pinned = ["--trusted-key", key.public_hex]
    code, out = _cli(["verify", str(receipt), "--response", str(response), *pinned], capsys)
    assert code == 0 and "OK receipt" in out
    code, out = _cli(["verify", str(receipt), "--json"], capsys)  # no pinned key: a failure
    assert code == 10 and json.loads(out)["error"] == "UnpinnedKeyError"
    code, out = _cli(["verify", str(receipt), "--allow-unpinned", "--json"], capsys)
    assert code == 0 and json.loads(out)["key_pinned"] is False
    full = tmp_path / "full.json"  # a response carrying its receipt under "specguard"
    full.write_text(json.dumps(dict(RESPONSE, specguard={"receipt": doc})))
    assert _cli(["verify", str(full), *pinned], capsys)[0] == 0
    response.write_text(json.dumps(dict(RESPONSE, model="other")))
    code, out = _cli(["verify", str(receipt), "--response", str(response), *pinned, "--json"], capsys)
    assert code == 11 and json.loads(out)["field"] == "statement.subject[0].digest.sha256"
    other = NodeKey(Ed25519PrivateKey.from_private_bytes(b"\x03" * 32))
    assert _cli(["verify", str(receipt), "--trusted-key", other.public_hex], capsys)[0] == 10
    transcript = tmp_path / "t.json"
    bad_t = t.to_json()
    bad_t["tokens"][0]["logprob"] += 0.5
    transcript.write_text(json.dumps(bad_t))
    assert _cli(["verify", str(receipt), *pinned, "--transcript", str(transcript)], capsys)[0] == 12
    forged = copy.deepcopy(doc)
    forged["log"]["index"] = 3
    receipt.write_text(json.dumps(forged))
    assert _cli(["verify", str(receipt), *pinned], capsys)[0] == 13
    receipt.write_text("{not json")
    assert _cli(["verify", str(receipt), *pinned], capsys)[0] == 3
    # an older receipt against a newer saved checkpoint, with the consistency proof from the node
    first = issuer.get_receipt(doc["receipt_id"])
    receipt.write_text(json.dumps(first))
    cp_file, proof_file = tmp_path / "cp.txt", tmp_path / "proof.json"
    issuer.issue(t, REQUEST, RESPONSE, {}, _Policy())
    cp_file.write_text(issuer.log.checkpoint())
    proof_file.write_text(json.dumps({"consistency_proof": [h.hex() for h in issuer.log.consistency_proof(5)]}))
    assert verify_checkpoint(cp_file.read_text(), [key.public_bytes]).size == 6
    code, _ = _cli(["verify", str(receipt), *pinned, "--checkpoint", str(cp_file),
                    "--consistency-proof", str(proof_file)], capsys)
    assert code == 0
    assert _cli(["verify", str(receipt), *pinned, "--checkpoint", str(cp_file)], capsys)[0] == 13


def test_evidence_a_plugin_could_not_check_is_reported_unchecked_not_ok():
    from specguard.attest.receipts.evidence import evidence_layer

    assert evidence_layer("evidence:x", "unchecked")["status"] == "unchecked"
    skipped = evidence_layer("evidence:attestation", {"checked": False, "reason": "no evidence file given"})
    assert skipped == {"layer": "evidence:attestation", "status": "unchecked", "detail": "no evidence file given"}
    assert evidence_layer("evidence:commitment", {"checked": True})["status"] == "ok"
