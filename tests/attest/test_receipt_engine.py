"""Receipts name the engine that generated a response: its name, version and model file digest.

The `engine` predicate key is optional, so receipts issued before it existed still verify; in a
new receipt it is signed like every other predicate field, and a malformed one is refused.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from specguard.attest import dsse
from specguard.attest.receipts import (
    ENGINE_KEY,
    ReceiptIssuer,
    ReceiptParseError,
    build_statement,
    receipt_document,
    verify_receipt,
)
from specguard.canonical import canonical_json
from specguard.keys import load_or_create_node_key
from specguard.transcript import SamplingParams, TokenRecord, Transcript

RESPONSE = {"id": "cmpl-1", "object": "text_completion", "model": "tiny",
            "choices": [{"index": 0, "text": "hello", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
REQUEST = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
GGUF_DIGEST = "sha256:" + "d" * 64


class _Policy:
    name = "dev"
    digest = "sha256:" + "c" * 64


def _transcript(**fields) -> Transcript:
    tokens = [TokenRecord(position=i, token_id=100 + i, logprob=-0.5) for i in range(4)]
    t = Transcript(model_name="tiny", model_digest="sha256:" + "a" * 64, tokenizer_digest="sha256:" + "b" * 64,
                   prompt_ids=[1, 2, 3], output_ids=[100, 101, 102, 103], tokens=tokens, steps=[],
                   params=SamplingParams(max_tokens=4), finish_reason="length", drafter="none")
    return replace(t, **fields)


@pytest.fixture()
def node(tmp_path: Path):
    key = load_or_create_node_key(tmp_path)
    issuer = ReceiptIssuer(tmp_path, key)
    yield issuer, key
    issuer.close()


def _issue_signed(issuer: ReceiptIssuer, statement: dict) -> dict:
    """Sign and log `statement` exactly as ReceiptIssuer.issue does (to make receipts of other shapes)."""
    envelope = dsse.sign_envelope(canonical_json(statement), issuer.key)
    rid = statement["predicate"]["receipt_id"]
    out: dict = {}

    def attach(appended):
        out.update(receipt_document(rid, envelope, issuer.origin, appended))
        return rid, canonical_json(out)

    issuer.log.append(canonical_json(envelope), attach)
    return out


def _statement(doc: dict) -> dict:
    return json.loads(base64.b64decode(doc["envelope"]["payload"]))


def test_new_receipts_name_engine_version_and_model_file(node) -> None:
    issuer, key = node
    t = _transcript(engine="llamacpp", engine_version="llama-cpp-python 0.3.36", model_file_digest=GGUF_DIGEST)
    doc = issuer.issue(t, REQUEST, RESPONSE, {}, _Policy())
    verified = verify_receipt(doc, trusted_keys=[key.public_bytes], response=RESPONSE)
    assert verified.predicate[ENGINE_KEY] == {"name": "llamacpp", "version": "llama-cpp-python 0.3.36",
                                              "model_file_digest": GGUF_DIGEST}


def test_a_receipt_without_the_engine_field_still_verifies(node) -> None:
    """Receipts issued before the field existed: the same statement without `engine`."""
    issuer, key = node
    statement = build_statement(_transcript(), REQUEST, RESPONSE, {}, _Policy(), key)
    del statement["predicate"][ENGINE_KEY]
    old = _issue_signed(issuer, statement)
    verified = verify_receipt(old, trusted_keys=[key.public_bytes], response=RESPONSE)
    assert ENGINE_KEY not in verified.predicate


@pytest.mark.parametrize("field, value", [
    ("name", "specguard"), ("version", "llama-cpp-python 0.3.35"), ("model_file_digest", "sha256:" + "e" * 64),
    ("model_file_digest", ""),
])
def test_tampering_the_engine_fields_breaks_the_signature(node, field, value) -> None:
    issuer, key = node
    t = _transcript(engine="llamacpp", engine_version="llama-cpp-python 0.3.36", model_file_digest=GGUF_DIGEST)
    doc = issuer.issue(t, REQUEST, RESPONSE, {}, _Policy())
    statement = _statement(doc)
    assert statement["predicate"][ENGINE_KEY][field] != value
    statement["predicate"][ENGINE_KEY][field] = value
    bad = copy.deepcopy(doc)
    bad["envelope"]["payload"] = base64.b64encode(canonical_json(statement)).decode()
    with pytest.raises(dsse.SignatureError) as err:
        verify_receipt(bad, trusted_keys=[key.public_bytes], response=RESPONSE)
    assert err.value.exit_code == 10


def test_dropping_the_engine_field_breaks_the_signature(node) -> None:
    """A receipt cannot be passed off as an older one (no engine named) by removing the field."""
    issuer, key = node
    doc = issuer.issue(_transcript(engine="llamacpp", model_file_digest=GGUF_DIGEST), REQUEST, RESPONSE, {},
                       _Policy())
    statement = _statement(doc)
    del statement["predicate"][ENGINE_KEY]
    bad = copy.deepcopy(doc)
    bad["envelope"]["payload"] = base64.b64encode(canonical_json(statement)).decode()
    with pytest.raises(dsse.SignatureError):
        verify_receipt(bad, trusted_keys=[key.public_bytes], response=RESPONSE)


@pytest.mark.parametrize("engine, field", [
    ({"name": "llamacpp", "version": "x"}, "predicate.engine"),
    ({"name": "llamacpp", "version": "x", "model_file_digest": "", "extra": 1}, "predicate.engine"),
    ({"name": 5, "version": "x", "model_file_digest": ""}, "predicate.engine.name"),
    ({"name": "llamacpp", "version": None, "model_file_digest": ""}, "predicate.engine.version"),
    ({"name": "llamacpp", "version": "x", "model_file_digest": "md5:00"}, "predicate.engine.model_file_digest"),
    ("llamacpp", "predicate.engine"),
])
def test_a_malformed_engine_field_is_refused_even_when_signed(node, engine, field) -> None:
    issuer, key = node
    statement = build_statement(_transcript(), REQUEST, RESPONSE, {}, _Policy(), key)
    statement["predicate"][ENGINE_KEY] = engine
    doc = _issue_signed(issuer, statement)
    with pytest.raises(ReceiptParseError) as err:
        verify_receipt(doc, trusted_keys=[key.public_bytes], response=RESPONSE)
    assert err.value.field == field


def test_transcript_json_round_trips_the_engine_fields_and_old_json_reads() -> None:
    t = _transcript(engine="llamacpp", engine_version="v", model_file_digest=GGUF_DIGEST, engine_rederivable=False)
    back = Transcript.from_json(t.to_json())
    assert back.engine_info() == t.engine_info() and back.engine_rederivable is False and not back.rederivable
    old = t.to_json()
    for key in ("engine_version", "model_file_digest", "engine_rederivable"):
        del old[key]
    legacy = Transcript.from_json(old)
    assert legacy.engine_info() == {"name": "llamacpp", "version": "", "model_file_digest": ""}
    assert legacy.engine_rederivable is True and legacy.rederivable
