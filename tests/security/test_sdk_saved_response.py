"""A response saved with the official openai SDK verifies like the raw body (issue 11 §2).

The SDK's `model_dump()` / `model_dump_json()` write `null` for every optional field the server did
not send; the response digest (format v2) removes null-valued object members before hashing, so
the SDK file verifies, while any change to a non-null value still fails (exit 11).
Real bodies from a node (in-process, tiny random model with the real tokenizer), real SDK objects.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion
from support.asgi import app_client
from support.receipt_factory import run_cli, write_json
from support.servers import make_tiny_model_dir

from specguard.attest.receipts import RESPONSE_DIGEST_V1, response_digest, strip_nulls
from specguard.models import load_model
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-sdk")
    node = Node(load_model(str(tiny)), ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("sdk-home"),
                served_model_name="tiny", max_model_len=256))
    with app_client(create_app(node)) as client:
        yield client, node
    node.close()


def _chat(client, **kw) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8,
            "temperature": 0}
    resp = client.post("/v1/chat/completions", json={**body, **kw})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _paths(tmp_path: Path, body: dict, saved: dict | str) -> tuple[str, str]:
    receipt = write_json(tmp_path / "receipt.json", body["specguard"]["receipt"])
    response = tmp_path / "saved.json"
    response.write_text(saved if isinstance(saved, str) else json.dumps(saved), "utf-8")
    return receipt, str(response)


@pytest.mark.parametrize("logprobs", [False, True])
def test_chat_response_saved_by_the_sdk_verifies(served, tmp_path, capsys, logprobs):
    client, node = served
    body = _chat(client, logprobs=logprobs, top_logprobs=2 if logprobs else None)
    sdk = ChatCompletion.model_validate(body)
    dumped = sdk.model_dump()
    # the SDK really adds nulls the server did not send (else this test would prove nothing)
    assert dumped != body and strip_nulls(dumped) == strip_nulls(body)
    assert dumped["choices"][0]["message"].get("refusal", "absent") is None
    pin = ["--trusted-key", node.public_key_bytes.hex()]
    for saved in (dumped, sdk.model_dump_json(), sdk.model_dump_json(indent=2), body):
        receipt, response = _paths(tmp_path, body, saved)
        code, out, err = run_cli(["verify", receipt, "--response", response, *pin, "--json"], capsys)
        assert code == 0, (out, err)
        layer = next(x for x in out["layers"] if x["layer"] == "response")
        assert layer["status"] == "ok" and "v3" in layer["detail"]  # v2 (nulls stripped), salted


def test_completion_response_saved_by_the_sdk_verifies(served, tmp_path, capsys):
    client, node = served
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 6,
                                                "temperature": 0, "logprobs": 1})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    dumped = Completion.model_validate(body).model_dump()
    receipt, response = _paths(tmp_path, body, dumped)
    code, out, _ = run_cli(["verify", receipt, "--response", response, "--trusted-key",
                            node.public_key_bytes.hex(), "--json"], capsys)
    assert code == 0, out


def test_a_changed_value_in_an_sdk_file_still_fails(served, tmp_path, capsys):
    client, node = served
    body = _chat(client)
    dumped = ChatCompletion.model_validate(body).model_dump()
    pin = ["--trusted-key", node.public_key_bytes.hex()]
    edits = [("content", lambda d: d["choices"][0]["message"].__setitem__("content", "something else")),
             ("finish", lambda d: d["choices"][0].__setitem__("finish_reason", "content_filter")),
             ("null to value", lambda d: d["choices"][0]["message"].__setitem__("refusal", "I refuse")),
             ("usage", lambda d: d["usage"].__setitem__("completion_tokens", 1))]
    for name, edit in edits:
        bad = copy.deepcopy(dumped)
        edit(bad)
        receipt, response = _paths(tmp_path, body, bad)
        code, out, _ = run_cli(["verify", receipt, "--response", response, *pin, "--json"], capsys)
        assert code == 11 and out["error"] == "SubjectDigestError", name


def test_digest_format_is_versioned_and_v1_receipts_keep_their_bytes():
    body = {"id": "x", "choices": [{"message": {"content": "hi", "refusal": None}, "logprobs": None}],
            "list": [None, 1], "specguard": {"receipt": {}}}
    # v2: null members removed recursively (arrays keep their nulls), "specguard" excluded
    from specguard.canonical import canonical_json, sha256_hex

    assert response_digest(body) == sha256_hex(canonical_json(
        {"id": "x", "choices": [{"message": {"content": "hi"}}], "list": [None, 1]}))
    # v1 (receipts that do not name a format) hashes the body as it is
    assert response_digest(body, RESPONSE_DIGEST_V1) == sha256_hex(canonical_json(
        {"id": "x", "choices": [{"message": {"content": "hi", "refusal": None}, "logprobs": None}],
         "list": [None, 1]}))
