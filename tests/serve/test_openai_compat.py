"""OpenAI compatibility at the edges: null and no-op options are accepted (and never claimed by a
receipt), unsupported features are refused by name, and 429 says when to retry.

Runs the real app in-process (tests/support/asgi.py) on a tiny random model with the real tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.asgi import app_client
from support.servers import make_tiny_model_dir

from specguard.attest.receipts import request_digest, verify_receipt
from specguard.canonical import json_digest
from specguard.models import load_model
from specguard.openai.prompting import parse_request
from specguard.openai.schema import ChatCompletionRequest, dump_request
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node

MODEL = "tiny"
#: options this server cannot honour, sent with values that change nothing (left out of receipts)
NO_OPS: dict[str, Any] = {"tools": None, "tool_choice": None, "logit_bias": {}, "response_format": {"type": "text"},
                          "store": False, "metadata": {}, "parallel_tool_calls": False, "functions": None,
                          "function_call": None}
#: supported options sent as null (the SDKs' model_dump does this); null is part of the signed request
NULLS: dict[str, Any] = {"user": None, "stop": None, "seed": None, "n": None, "stream_options": None,
                         "presence_penalty": None, "frequency_penalty": None, "logprobs": None, "top_logprobs": None,
                         "max_completion_tokens": None, "stream": None}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)
    n = Node(load_model(str(tiny)), ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("compat-home"),
             served_model_name=MODEL, max_model_len=512, max_concurrency=1, max_queue=0, default_max_tokens=8))
    yield n
    n.close()


@pytest.fixture(scope="module")
def client(node: Node) -> Iterator[httpx.Client]:
    with app_client(create_app(node)) as c:
        yield c


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 6,
            "temperature": 0, **fields}


def test_null_and_no_op_options_are_accepted_and_not_in_the_receipt(client, node):
    plain = client.post("/v1/chat/completions", json=_body())
    noisy = client.post("/v1/chat/completions", json=_body(**NO_OPS, **NULLS))
    assert plain.status_code == noisy.status_code == 200, noisy.text
    for resp in (plain, noisy):
        body = resp.json()
        verify_receipt(body["specguard"]["receipt"], trusted_keys=[node.public_key_bytes], response=body)
    # the canonical request (what the receipt's request digest covers) names no ignored option
    clean, with_no_ops = (dump_request(ChatCompletionRequest.model_validate(b)) for b in (_body(), _body(**NO_OPS)))
    nulls_only = client.post("/v1/chat/completions", json=_body(**NULLS)).json()
    with_nulls = dump_request(ChatCompletionRequest.model_validate(_body(**NULLS)))
    for body in (noisy.json(), nulls_only):  # each receipt covers the same request, no-op options or not
        receipt = body["specguard"]["receipt"]
        signed = verify_receipt(receipt, trusted_keys=[node.public_key_bytes]).predicate["request_digest"]
        assert signed == request_digest(with_nulls, receipt["disclosure"]["secret"])
    assert json_digest(clean) == json_digest(with_no_ops)
    assert not {"tools", "logit_bias", "response_format", "store", "metadata", "parallel_tool_calls"} & set(with_no_ops)
    assert plain.json()["choices"][0]["message"] == noisy.json()["choices"][0]["message"]


def test_other_no_op_spellings_are_accepted(client):
    for extra in ({"tools": [], "tool_choice": "none"}, {"tool_choice": "auto"}, {"logit_bias": {"42": 0}},
                  {"parallel_tool_calls": True}, {"functions": [], "function_call": "none"}):
        assert client.post("/v1/chat/completions", json=_body(**extra)).status_code == 200, extra
    completion = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "logit_bias": {}, "store": False, "metadata": {}}
    assert client.post("/v1/completions", json=completion).status_code == 200


@pytest.mark.parametrize(("extra", "says"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools are not supported"),
    ({"functions": [{"name": "f"}]}, "tools are not supported"),
    ({"tool_choice": "required"}, "'tool_choice'"),
    ({"response_format": {"type": "json_object"}}, "response_format 'json_object' is not supported"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format 'json_schema' is not supported"),
    ({"logit_bias": {"42": 5}}, "logit_bias is not supported"),
    ({"store": True}, "store: true is not supported"),
    ({"metadata": {"k": "v"}}, "metadata is not supported"),
    ({"audio": {"voice": "alloy"}}, "'audio' is not supported by this server"),
    ({"modalities": ["text", "audio"]}, "'modalities' is not supported by this server"),
])
def test_unsupported_features_are_refused_by_name(client, extra, says):
    resp = client.post("/v1/chat/completions", json=_body(**extra))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert says in error["message"] and "Value error" not in error["message"], error
    assert error["param"] == next(iter(extra)) and error["type"] == "invalid_request_error"


def test_verifiers_parse_the_same_way(client):
    """The consensus path (parse_request) accepts and refuses exactly what the server does."""
    assert dump_request(parse_request(_body(**NO_OPS))) == dump_request(parse_request(_body()))
    with pytest.raises(Exception, match="tools are not supported"):
        parse_request(_body(tools=[{"type": "function"}]))
    with pytest.raises(Exception, match="'audio' is not supported by this server"):
        parse_request(_body(audio={}))


def test_429_carries_retry_after(client, node):
    node.limiter.running += 1  # the only slot taken and no queue: the next request is refused at once
    try:
        resp = client.post("/v1/chat/completions", json=_body())
    finally:
        node.limiter.running -= 1
    assert resp.status_code == 429 and resp.json()["error"]["type"] == "rate_limit_error"
    assert int(resp.headers["Retry-After"]) >= 1
    assert client.post("/v1/chat/completions", json=_body()).status_code == 200
