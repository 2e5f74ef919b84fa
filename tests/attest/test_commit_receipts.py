"""Receipts carry the commitment evidence and receipt verification checks it (receipts + commitments)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from specguard.attest.commitments import group as g
from specguard.attest.options import VerifyOptions
from specguard.attest.receipts import ReceiptIssuer, verify_receipt
from specguard.errors import VerificationError
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


@pytest.fixture()
def issued(tmp_path: Path):
    key = load_or_create_node_key(tmp_path)
    node = SimpleNamespace(home=tmp_path, model=SimpleNamespace(digest=DIGEST), key_id=key.key_id,
                           public_key_bytes=key.public_bytes)
    transcript = _transcript()
    evidence: dict = {}
    receipt_id = "ab" * 16
    plugin.seal_transcript(transcript=transcript, evidence=evidence, node=node, receipt_id=receipt_id)
    issuer = ReceiptIssuer(tmp_path, key)
    try:
        doc = issuer.issue(transcript, {"prompt": "hi"}, {"id": "r1", "text": "x"}, evidence, None,
                           receipt_id=receipt_id)
    finally:
        issuer.close()
    return doc, key, evidence["commitment"]


def test_receipt_verification_checks_commitment_evidence(issued) -> None:
    doc, key, value = issued
    verified = verify_receipt(doc, VerifyOptions(model_commitment=value["published"]), trusted_keys=[key.public_bytes],
                              evidence_verifier=hook_evidence_verifier)
    summary = verified.evidence["commitment"]
    assert summary["pinned"] is True and summary["response"] == value["response"]
    assert summary["context"] == verified.statement["predicate"]["binding_digest"]
    assert any(layer["layer"] == "evidence:commitment" and layer["status"] == "ok" for layer in verified.layers)


def test_receipt_with_other_pinned_commitment_fails(issued) -> None:
    doc, key, _value = issued
    with pytest.raises(VerificationError, match="pinned"):
        verify_receipt(doc, VerifyOptions(model_commitment=g.generator_h().hex()), trusted_keys=[key.public_bytes],
                       evidence_verifier=hook_evidence_verifier)
