"""Commitment evidence binds the node key and the receipt id, and C_i == C is refused (issue 11 §7).

Attacker: a serving node (or anyone holding one node's receipts) that copies a valid commitment
proof into another receipt or under another node's key, or that "proves" equality between the
published commitment and itself (which needs no knowledge at all: any T = s·H verifies when
C_i − C = 0). Real receipts signed by real node keys; verification through verify_receipt.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from specguard.attest.commitments import group as g
from specguard.attest.commitments import model as md
from specguard.attest.commitments import proofs as pf
from specguard.attest.commitments.encoding import equality_proof_to_json
from specguard.attest.options import VerifyOptions
from specguard.attest.receipts import ReceiptIssuer, verify_receipt
from specguard.errors import UsageError, VerificationError
from specguard.keys import load_or_create_node_key
from specguard.plugins import commitments as plugin
from specguard.plugins.receipts.cli import hook_evidence_verifier
from specguard.transcript import SamplingParams, TokenRecord, Transcript

DIGEST = "sha256:" + "44" * 32


def _transcript() -> Transcript:
    tokens = [TokenRecord(position=i, token_id=5 + i, logprob=-0.25 * i) for i in range(3)]
    return Transcript(model_name="tiny", model_digest=DIGEST, tokenizer_digest="sha256:" + "55" * 32,
                      prompt_ids=[1, 2], output_ids=[5, 6, 7], tokens=tokens, steps=[],
                      params=SamplingParams(max_tokens=3), finish_reason="length", drafter="none",
                      salt="66" * 32)  # the receipt secret, set before sealing as the server does


def _issue(home: Path, evidence_for=None, receipt_id: str = "aa" * 16, key_home: Path | None = None):
    """A receipt signed by the node at `key_home` (default `home`) whose commitment evidence was made
    for `evidence_for` = (node public key, receipt id) (default: this receipt's own)."""
    key = load_or_create_node_key(key_home or home)
    node = SimpleNamespace(home=home, model=SimpleNamespace(digest=DIGEST), key_id=key.key_id,
                           public_key_bytes=(evidence_for or (key.public_bytes, receipt_id))[0])
    evidence: dict = {}
    plugin.seal_transcript(transcript=_transcript(), evidence=evidence, node=node,
                           receipt_id=(evidence_for or (key.public_bytes, receipt_id))[1])
    issuer = ReceiptIssuer(key_home or home, key)
    try:
        return issuer.issue(_transcript(), {"prompt": "hi"}, {"id": "r1", "text": "x"}, evidence, None,
                            receipt_id=receipt_id), key, evidence["commitment"]
    finally:
        issuer.close()


def test_honest_receipt_verifies_with_its_own_key_and_id(tmp_path):
    doc, key, value = _issue(tmp_path)
    verified = verify_receipt(doc, trusted_keys=[key.public_bytes], options=VerifyOptions(model_commitment=value["published"]),
                       evidence_verifier=hook_evidence_verifier)
    summary = verified.evidence["commitment"]
    assert summary["receipt_id"] == doc["receipt_id"] and summary["node_key"] == key.public_bytes.hex()


def test_proof_made_for_receipt_a_fails_in_receipt_b(tmp_path):
    key = load_or_create_node_key(tmp_path)
    # the node seals evidence for receipt A, then puts it into receipt B (same key, same response)
    doc, key, value = _issue(tmp_path, evidence_for=(key.public_bytes, "aa" * 16), receipt_id="bb" * 16)
    with pytest.raises(VerificationError, match="equality proof does not verify"):
        verify_receipt(doc, trusted_keys=[key.public_bytes], options=VerifyOptions(model_commitment=value["published"]),
                       evidence_verifier=hook_evidence_verifier)


def test_proof_made_under_key_a_fails_under_key_b(tmp_path):
    key_a = load_or_create_node_key(tmp_path / "a")
    # node B signs a receipt carrying evidence that was made for node A's key (same receipt id)
    doc, key_b, value = _issue(tmp_path / "a", evidence_for=(key_a.public_bytes, "cc" * 16),
                               receipt_id="cc" * 16, key_home=tmp_path / "b")
    assert key_b.public_bytes != key_a.public_bytes
    with pytest.raises(VerificationError, match="equality proof does not verify"):
        verify_receipt(doc, trusted_keys=[key_b.public_bytes], options=VerifyOptions(model_commitment=value["published"]),
                       evidence_verifier=hook_evidence_verifier)


def test_response_commitment_equal_to_published_is_rejected(tmp_path):
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    key, rid, binding = bytes(range(32)), "dd" * 16, _transcript().binding_digest()
    c = secret.commitment
    # the forgery needs no secret: with C_i == C, any T = s·H satisfies s·H == T + c·(C_i − C)
    s = 12345
    forged = pf.EqualityProof(t=g.generator_h().mul(s), s=s)
    with pytest.raises(VerificationError, match="itself"):
        pf.verify_equality(c, c, forged, pf.response_context(binding, key, rid))
    evidence = {"suite": pf.SUITE, "version": pf.VERSION, "published": c.hex(), "response": c.hex(),
                "equality_proof": equality_proof_to_json(forged), "context": binding}
    with pytest.raises(VerificationError, match="C_i == C"):
        md.verify_response_evidence(evidence, binding, c.hex(), node_public_key=key, receipt_id=rid)
    with pytest.raises(UsageError, match="same commitment"):
        pf.prove_equality(c, secret.blinding, c, secret.blinding, b"ctx")


def test_version_1_evidence_is_rejected_with_a_clear_error(tmp_path):
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    key, rid, binding = bytes(range(32)), "ee" * 16, _transcript().binding_digest()
    value = dict(md.response_evidence(secret, binding, node_public_key=key, receipt_id=rid), version=1)
    with pytest.raises(VerificationError, match="version 1 is no longer accepted"):
        md.verify_response_evidence(value, binding, node_public_key=key, receipt_id=rid)


def test_missing_node_key_or_receipt_id_fails_closed(tmp_path):
    secret = md.load_or_create_secret(tmp_path, DIGEST)
    key, rid, binding = bytes(range(32)), "ff" * 16, _transcript().binding_digest()
    value = md.response_evidence(secret, binding, node_public_key=key, receipt_id=rid)
    for bad_key, bad_rid in ((None, rid), ("zz", rid), (b"short", rid), (key, None), (key, "")):
        with pytest.raises(VerificationError):
            md.verify_response_evidence(value, binding, node_public_key=bad_key, receipt_id=bad_rid)
