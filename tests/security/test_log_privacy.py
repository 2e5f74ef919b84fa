"""Issue 20 §3: the public log discloses nothing about answers.

Attacker: an anonymous reader of the transparency log (GET /specguard/v1/log/entries/{i}, the
stored receipts). Statements used to carry unsalted SHA-256 of prompt and output ids, the output
length and the parameters in clear: a 1-token answer fell to brute force over the vocabulary and a
guessed prompt could be confirmed by hashing it. Receipts are now statement format 2: every content
digest is salted with a per-response receipt secret only the requester gets (in the response's
`specguard.receipt.disclosure`), and parameters, lengths, finish reason and drafter statistics are
only in the sealed part. Inclusion proofs and checkpoints keep working for anyone; the requester
still verifies everything.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json

import pytest
from support.asgi import app_client
from support.receipt_factory import run_cli, write_json
from support.servers import make_tiny_model_dir

from specguard.attest import merkle
from specguard.attest.checkpoint import verify_checkpoint
from specguard.attest.receipts import response_digest
from specguard.canonical import json_digest
from specguard.models import load_model
from specguard.openai import prompting
from specguard.openai.schema import dump_request
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node
from specguard.transcript import ids_digest

PROMPT = "Patient Alice Example has"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1, "temperature": 0,
        "stop": ["\n\n"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = load_model(str(make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-privacy")))
    node = Node(model, ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("privacy-home"), served_model_name="tiny",
                batching=False))
    with app_client(create_app(node)) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200, resp.text
        yield client, node, model, resp.json()
    node.close()


def _public_entry(client) -> tuple[dict, dict, str]:
    """What an anonymous reader gets: the newest log entry, its statement, and the raw text of both."""
    size = int(client.get("/specguard/v1/log/checkpoint").text.split("\n")[1])
    entry = client.get(f"/specguard/v1/log/entries/{size - 1}").json()
    statement = json.loads(base64.b64decode(entry["envelope"]["payload"]))
    return entry, statement, json.dumps(entry) + json.dumps(statement)


def test_brute_forcing_a_one_token_answer_finds_nothing(served):
    client, _, model, body = served
    _, statement, text = _public_entry(client)
    assert body["usage"]["completion_tokens"] == 1
    hits = [tok for tok in range(model.vocab_size) if ids_digest([tok]) in text]
    assert hits == []  # before: exactly the answer's token
    predicate = statement["predicate"]
    for leaked in ("params", "finish_reason", "token_records_count", "drafter", "output_ids_digest",
                   "prompt_ids_digest", "token_records_root"):
        assert leaked not in predicate, leaked
    assert "\\n\\n" not in text and '"max_tokens": 1' not in text  # parameters (stop strings) not in clear


def test_a_guessed_prompt_cannot_be_confirmed(served):
    client, _, model, body = served
    _, statement, text = _public_entry(client)
    request_obj = dump_request(prompting.parse_request(CHAT))
    assert json_digest(request_obj) not in text
    assert ids_digest(prompting.prompt_ids(model, prompting.parse_request(CHAT))) not in text
    assert response_digest(body) not in text
    receipt_id = body["specguard"]["receipt_id"]
    stored = client.get(f"/specguard/v1/receipts/{receipt_id}").json()
    assert "disclosure" not in stored and "disclosure" in body["specguard"]["receipt"]
    assert body["specguard"]["receipt"]["disclosure"]["secret"] not in json.dumps(stored)


def test_inclusion_proofs_and_checkpoints_work_anonymously(served):
    client, node, _, _ = served
    entry, _, _ = _public_entry(client)
    proof = client.get("/specguard/v1/log/proof/inclusion", params={"index": entry["index"]}).json()
    cp = verify_checkpoint(proof["checkpoint"], [node.public_key_bytes])
    merkle.verify_inclusion(entry["index"], cp.size, bytes.fromhex(entry["leaf_hash"]),
                            [bytes.fromhex(h) for h in proof["inclusion_proof"]], cp.root)


def test_the_requester_verifies_everything_with_the_secret(served, tmp_path, capsys):
    client, node, _, body = served
    key = node.public_key_bytes.hex()
    response = write_json(tmp_path / "response.json", body)
    request = write_json(tmp_path / "request.json", CHAT)
    code, out, _ = run_cli(["verify", response, "--trusted-key", key, "--request", request, "--json"], capsys)
    assert code == 0, out
    layers = {x["layer"]: x["status"] for x in out["layers"]}
    assert layers["sealed"] == layers["response"] == layers["request"] == layers["params"] == "ok"
    # the public receipt alone: signature and log verify, content stays sealed
    public = client.get(f"/specguard/v1/receipts/{body['specguard']['receipt_id']}").json()
    code, out, _ = run_cli(["verify", write_json(tmp_path / "public.json", public), "--trusted-key", key,
                            "--json"], capsys)
    assert code == 0 and {x["layer"]: x["status"] for x in out["layers"]}["sealed"] == "unchecked"
    # ... and checking content against it without the secret fails closed
    bare = copy.deepcopy(body)
    del bare["specguard"]["receipt"]["disclosure"]
    code, out, _ = run_cli(["verify", write_json(tmp_path / "public.json", public), "--trusted-key", key,
                            "--response", write_json(tmp_path / "bare.json", bare), "--json"], capsys)
    assert code == 11 and out["error"] == "ReceiptSecretError"


def test_a_wrong_secret_or_altered_sealed_part_fails(served, tmp_path, capsys):
    _, node, _, body = served
    key = node.public_key_bytes.hex()
    for change in ("secret", "params"):
        bad = copy.deepcopy(body)
        disclosure = bad["specguard"]["receipt"]["disclosure"]
        if change == "secret":
            disclosure["secret"] = "0" * 64
        else:
            disclosure["sealed"]["params"]["max_tokens"] = 2
        code, out, _ = run_cli(["verify", write_json(tmp_path / f"{change}.json", bad), "--trusted-key", key,
                                "--json"], capsys)
        assert code == 11 and out["field"] == "predicate.sealed_digest", (change, out)


def test_old_format_1_receipts_still_verify(tmp_path, capsys):
    """A receipt issued before salting (format 1, content in clear) keeps verifying."""
    from support.receipt_factory import REQUEST, RESPONSE, Policy, transcript

    from specguard.attest import dsse
    from specguard.attest.receipts import ReceiptIssuer, build_statement, receipt_document
    from specguard.canonical import canonical_json
    from specguard.keys import load_or_create_node_key

    key = load_or_create_node_key(tmp_path)
    issuer = ReceiptIssuer(tmp_path, key)
    try:
        old = dataclasses.replace(transcript(), salt="")  # no receipt secret: format 1
        statement = build_statement(old, REQUEST, RESPONSE, {}, Policy(), key)
        assert statement["predicateType"] == "https://specguard.dev/receipt/v1"
        envelope = dsse.sign_envelope(canonical_json(statement), key)
        appended = issuer.log.append(canonical_json(envelope))
        doc = receipt_document(statement["predicate"]["receipt_id"], envelope, issuer.origin, appended)
    finally:
        issuer.close()
    code, out, _ = run_cli(["verify", write_json(tmp_path / "old.json", doc), "--trusted-key", key.public_hex,
                            "--response", write_json(tmp_path / "r.json", RESPONSE), "--json"], capsys)
    assert code == 0, out
