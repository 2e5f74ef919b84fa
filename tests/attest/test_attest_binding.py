"""Key binding: exact REPORT_DATA bytes, and a round trip with a simulated node through the
plugin hooks (seal -> evidence document -> verify_evidence) and the HTTP route."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import specguard.node_evidence as node_evidence_module
from specguard.attest import binding
from specguard.attest.options import VerifyOptions
from specguard.attest.tee import collect
from specguard.attest.tee.document import load_document, verify_document
from specguard.attest.tee.errors import AttestationPolicyError, EvidenceParseError, EvidenceVerificationError
from specguard.errors import UsageError
from specguard.node_evidence import node_evidence
from specguard.plugins import attestation as plugin
from specguard.policies import load_policy


def test_report_data_exact_bytes():
    pk, nonce = bytes(range(32)), bytes(range(100, 116))
    pre = (len(binding.BINDING_TAG).to_bytes(8, "big") + binding.BINDING_TAG.encode()
           + (32).to_bytes(8, "big") + pk + (16).to_bytes(8, "big") + nonce)
    assert binding.binding_preimage(pk, nonce) == pre
    assert binding.report_data_for(pk, nonce) == hashlib.sha512(pre).digest()
    assert binding.report_data_for(pk, nonce) != binding.report_data_for(pk, nonce[:-1] + b"\x00")


@pytest.mark.parametrize("nonce", [b"", b"x" * 15, b"x" * 65])
def test_nonce_length_enforced(nonce):
    with pytest.raises(UsageError):
        binding.report_data_for(bytes(32), nonce)


def test_public_key_length_enforced():
    with pytest.raises(UsageError):
        binding.report_data_for(bytes(31), bytes(16))


@pytest.fixture()
def no_tee(monkeypatch, tmp_path):
    monkeypatch.setattr(collect, "TSM_REPORT_DIR", tmp_path / "no-tsm")
    monkeypatch.setattr(collect, "SEV_GUEST_DEV", tmp_path / "no-sev-guest")
    monkeypatch.setattr(node_evidence_module, "_SEALED", {})


def make_node(policy: str = "dev", key_id: str = "node-1"):
    key = Ed25519PrivateKey.generate()
    pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SimpleNamespace(signing_key=key, public_key_bytes=pk, key_id=key_id, policy=load_policy(policy),
                           home=None, model=None)


def statement_for(node) -> dict:
    return {"predicate": {"node": {"public_key": node.public_key_bytes.hex()}}}


def test_round_trip_with_simulated_node(no_tee, tmp_path, caplog):
    node = make_node()
    evidence: dict = {}
    plugin.seal_transcript(transcript=None, evidence=evidence, node=node)
    slot = evidence["attestation"]
    assert slot["type"] == "simulated" and slot["simulated"] is True
    again: dict = {}
    plugin.seal_transcript(transcript=None, evidence=again, node=node)
    assert again == evidence  # collected once per node
    doc = node_evidence(node)
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(doc.to_json()))
    ok = plugin.verify_evidence(slot="attestation", value=slot, statement=statement_for(node),
                                options=VerifyOptions(attestation_evidence=str(path), policy=load_policy("dev")))
    assert ok["checked"] is True and ok["simulated"] is True and ok["evidence_digest"] == slot["evidence_digest"]
    # the strict policy rejects SIMULATED evidence
    with pytest.raises(AttestationPolicyError) as err:
        plugin.verify_evidence(slot="attestation", value=slot, statement=statement_for(node),
                               options=VerifyOptions(attestation_evidence=str(path)))
    assert "SIMULATED" in err.value.failures[0].message
    # a receipt from a different node key does not match this evidence
    with pytest.raises(EvidenceVerificationError, match="different node key"):
        plugin.verify_evidence(slot="attestation", value=slot, statement=statement_for(make_node()),
                               options=VerifyOptions(attestation_evidence=doc.to_json(), policy=load_policy("dev")))
    assert any("SIMULATED" in r.getMessage() for r in caplog.records)


def test_tampered_or_missing_evidence(no_tee):
    node = make_node()
    evidence: dict = {}
    plugin.seal_transcript(transcript=None, evidence=evidence, node=node)
    slot = evidence["attestation"]
    other = node_evidence(node, nonce=b"z" * 32).to_json()
    with pytest.raises(EvidenceVerificationError, match="not the one the receipt references"):
        plugin.verify_evidence(slot="attestation", value=slot, statement=statement_for(node),
                               options=VerifyOptions(attestation_evidence=other, policy=load_policy("dev")))
    unchecked = plugin.verify_evidence(slot="attestation", value=slot, statement=statement_for(node), options=VerifyOptions())
    assert unchecked["checked"] is False and "NOT verified" in unchecked["reason"]
    assert plugin.verify_evidence(slot="receipt", value={}, statement={}, options=VerifyOptions()) is None
    with pytest.raises(EvidenceParseError, match="public_key"):
        plugin.verify_evidence(slot="attestation", value=slot, statement={},
                               options=VerifyOptions(attestation_evidence=node_evidence(node).to_json()))


def test_report_data_mismatch_detected(no_tee):
    node = make_node()
    doc = node_evidence(node, nonce=b"a" * 16).to_json()
    doc["nonce"] = (b"b" * 16).hex()  # claim another nonce than the one bound in REPORT_DATA
    with pytest.raises(AttestationPolicyError) as err:
        verify_document(doc, load_policy("dev"))
    assert [f.field for f in err.value.failures] == ["report_data"]


def test_strict_node_without_tee_refuses_simulated(no_tee):
    node = make_node("strict")
    with pytest.raises(collect.CollectionError, match="no TEE"):
        plugin.seal_transcript(transcript=None, evidence={}, node=node)


def test_no_node_no_slot():
    evidence: dict = {}
    plugin.seal_transcript(transcript=None, evidence=evidence, node=None)
    assert evidence == {}


def test_attestation_route(no_tee):
    from fastapi import FastAPI
    from support.asgi import app_client

    node = make_node()
    app = FastAPI()
    plugin.register_routes(app=app, node=node)
    client = app_client(app)
    nonce = bytes(range(24))
    r = client.get("/specguard/v1/attestation", params={"nonce": nonce.hex()})
    assert r.status_code == 200
    doc = load_document(r.json())
    assert doc.nonce == nonce and doc.public_key == node.public_key_bytes and doc.simulated
    verify_document(doc, load_policy("dev"), expected_public_key=node.public_key_bytes)
    for bad in ("zz", "00" * 15, "00" * 65):
        assert client.get("/specguard/v1/attestation", params={"nonce": bad}).status_code == 400
    sealed = client.get("/specguard/v1/attestation").json()
    assert load_document(sealed).nonce == binding.seal_nonce(node.public_key_bytes)


def test_gpu_nonce_exact_bytes():
    cpu, pk = b"cpu report bytes", bytes(range(32))
    digest = hashlib.sha256(cpu).digest()
    pre = (len(binding.GPU_NONCE_TAG).to_bytes(8, "big") + binding.GPU_NONCE_TAG.encode()
           + (32).to_bytes(8, "big") + digest + (32).to_bytes(8, "big") + pk)
    assert binding.gpu_nonce_for(cpu, pk) == hashlib.sha256(pre).digest()
    assert binding.gpu_nonce_for(cpu + b"x", pk) != binding.gpu_nonce_for(cpu, pk)
    with pytest.raises(UsageError):
        binding.gpu_nonce_for(b"", pk)


def test_document_without_gpus_keeps_its_bytes_and_gpus_shape_is_checked(no_tee):
    node = make_node()
    doc = node_evidence(node, nonce=b"a" * 16)
    plain = doc.to_json()
    assert "gpus" not in plain and load_document(plain).digest() == doc.digest()
    for bad in ([], "x", [{"type": "nvidia"}], [{"type": "nvidia", "evidence": "AA==", "extra": 1}],
                [{"type": "nvidia", "evidence": "AA=="}] * 17):
        with pytest.raises(EvidenceParseError, match="gpu|GPU"):
            load_document({**plain, "gpus": bad})
    with_gpu = load_document({**plain, "gpus": [{"type": "nvidia", "evidence": "AA==", "certs": None}]})
    assert with_gpu.gpus[0].evidence == b"\x00" and with_gpu.digest() != doc.digest()
    # a CPU type is not GPU evidence
    with pytest.raises(EvidenceParseError, match="only GPU evidence"):
        verify_document({**plain, "gpus": [{"type": "simulated", "evidence": plain["evidence"]}]}, load_policy("dev"))
