"""Issue 20 §2: certified truncation when the request has no `max_tokens`.

Attacker: a serving node. A chat request without `max_tokens` (the usual call) left the node free
to run any max_tokens and sign it: it cut an answer after its first clause and every verifier,
and `specguard verify --request --model`, accepted. Now the node's defaults are signed into the
receipt (`predicate.request_defaults`) and the parameters must be what the request resolves to
(`specguard.attest.request_defaults`, one rule for server, verifiers and verify) under the signed
defaults *and* under the defaults the verifier expects (256 unless pinned).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.asgi import app_client
from support.consensus_node import Served, build_body
from support.receipt_factory import run_cli, write_json
from support.servers import make_tiny_model_dir

import specguard.openai.resolved as resolved
from specguard.attest.receipts import ReceiptIssuer
from specguard.attest.request_defaults import (
    ExpectedDefaults,
    ParamsMismatchError,
    RequestDefaults,
    UnpinnedDefaultError,
    check_params,
    resolve_params,
)
from specguard.consensus.service import VerifierService
from specguard.engine.speculative import SpeculativeEngine
from specguard.keys import load_or_create_node_key
from specguard.models import load_model
from specguard.openai import prompting
from specguard.openai.schema import dump_request
from specguard.policies.model import policy_from_dict
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Is ibuprofen safe every day?"}],
        "temperature": 0}  # no max_tokens: the node's default decides


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-defaults")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dir):
    node = Node(load_model(str(tiny_dir)), ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("defaults-home"),
                served_model_name="tiny", default_max_tokens=24, batching=False))
    with app_client(create_app(node)) as client:
        yield client, node
    node.close()


def _chat(client) -> dict:
    resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _verify(capsys, node, tmp_path: Path, body: dict, *extra: str) -> tuple[int, dict]:
    saved = write_json(tmp_path / "response.json", body)
    request = write_json(tmp_path / "request.json", CHAT)
    code, out, err = run_cli(["verify", saved, "--trusted-key", node.public_key_bytes.hex(), "--request", request,
                              *extra, "--json"], capsys)
    return code, out if out is not None else {"stderr": err}


# --- the rule itself ----------------------------------------------------------------------------


def test_resolution_rule_fills_max_tokens_from_the_defaults():
    request = dump_request(prompting.parse_request(CHAT))
    defaults = RequestDefaults(max_tokens=256, context_length=100)
    assert resolve_params(request, 10, defaults).max_tokens == 90  # cut to the room the context leaves
    assert resolve_params(request, 10, RequestDefaults(max_tokens=32, context_length=4096)).max_tokens == 32
    asked = dict(request, max_tokens=7)
    assert resolve_params(asked, 10, defaults).max_tokens == 7


def test_a_node_that_picks_max_tokens_fails_check_params():
    request = dump_request(prompting.parse_request(CHAT))
    signed = RequestDefaults(max_tokens=256, context_length=8192)
    honest = resolve_params(request, 20, signed).to_json()
    check_params(honest, request, 20, signed, ExpectedDefaults())
    cut = dict(honest, max_tokens=9)
    with pytest.raises(ParamsMismatchError) as err:
        check_params(cut, request, 20, signed, ExpectedDefaults())
    assert err.value.field == "params.max_tokens" and err.value.got == 9
    with pytest.raises(ParamsMismatchError) as err:  # even without knowing the prompt length
        check_params(cut, request, None, signed, ExpectedDefaults())
    # a node that signs a small default is held to the auditor's pin
    small = RequestDefaults(max_tokens=9, context_length=8192)
    with pytest.raises(ParamsMismatchError) as err:
        check_params(resolve_params(request, 20, small).to_json(), request, 20, small, ExpectedDefaults())
    assert err.value.field == "request_defaults.max_tokens" and err.value.expected == 256
    # a node that shrinks its context length to cut the answer: needs a pinned context to pass
    tight = RequestDefaults(max_tokens=256, context_length=29)
    with pytest.raises(UnpinnedDefaultError):
        check_params(resolve_params(request, 20, tight).to_json(), request, 20, tight, ExpectedDefaults())
    with pytest.raises(ParamsMismatchError):
        check_params(resolve_params(request, 20, tight).to_json(), request, 20, tight,
                     ExpectedDefaults(context_length=8192))


# --- the server signs its defaults; verify checks them --------------------------------------------


def test_node_signs_its_defaults_and_verify_accepts_the_honest_answer(served, tmp_path, capsys):
    client, node = served
    body = _chat(client)
    code, out = _verify(capsys, node, tmp_path, body, "--default-max-tokens", "24")
    assert code == 0, out
    assert any(x["layer"] == "params" and x["status"] == "ok" for x in out["layers"])


def test_verify_with_the_model_checks_prompt_ids_and_context(served, tiny_dir, tmp_path, capsys):
    client, node = served
    code, out = _verify(capsys, node, tmp_path, _chat(client), "--default-max-tokens", "24", "--model", str(tiny_dir))
    assert code == 0, out
    params = next(x for x in out["layers"] if x["layer"] == "params")
    assert "context length 512" in params["detail"]


def test_verify_holds_an_unpinned_node_default_to_256(served, tmp_path, capsys):
    """The node's default (24) is not what the auditor expects (256, nothing pinned): refused."""
    client, node = served
    code, out = _verify(capsys, node, tmp_path, _chat(client))
    assert code == 11, out
    assert out["field"] == "request_defaults.max_tokens" and out["got"] == 24 and out["expected"] == 256


def test_node_that_truncates_an_omitted_max_tokens_fails_verify(served, tiny_dir, tmp_path, capsys, monkeypatch):
    """The attack: the node runs (and signs) max_tokens=3 for a request without max_tokens."""
    client, node = served
    real = resolved.resolve_max_tokens
    monkeypatch.setattr(resolved, "resolve_max_tokens", lambda *a: min(3, real(*a)))
    body = _chat(client)
    monkeypatch.undo()
    assert body["usage"]["completion_tokens"] <= 3
    for extra in ((), ("--model", str(tiny_dir))):  # the issue's `verify --request --model` exited 0
        code, out = _verify(capsys, node, tmp_path, body, "--default-max-tokens", "24", *extra)
        assert code == 11, out
        assert out["error"] == "ParamsMismatchError" and out["field"] == "params.max_tokens"


# --- consensus verifiers ----------------------------------------------------------------------


def _serve(model, issuer, request: dict, max_tokens: int, defaults: RequestDefaults) -> Served:
    req = prompting.parse_request(request)
    ids = prompting.prompt_ids(model, req)
    params = prompting.sampling_params(req, max_tokens)
    t = SpeculativeEngine(model).generate(ids, params, top_logprobs=0)
    request_obj = dump_request(req)
    body = build_body(model, request_obj, t)
    receipt = issuer.issue(t, request_obj, body, {}, policy_from_dict({"name": "test"}), request_defaults=defaults)
    return Served(t, receipt, request_obj, body)


def test_verifier_rejects_a_truncated_default(tiny_dir, tmp_path):
    model = load_model(str(tiny_dir))
    issuer = ReceiptIssuer(tmp_path / "node", load_or_create_node_key(tmp_path / "node"))
    service = VerifierService(model=model, key=load_or_create_node_key(tmp_path / "verifier"),
                              expected_defaults=ExpectedDefaults(max_tokens=12, context_length=model.max_context))
    defaults = RequestDefaults(max_tokens=12, context_length=model.max_context)
    try:
        honest = _serve(model, issuer, CHAT, 12, defaults)
        vote = service.handle(honest.verify_body("ab" * 16))
        assert vote["vote"]["verdict"] == "accept", vote["vote"]["reasons"]
        cut = _serve(model, issuer, CHAT, 2, defaults)
        vote = service.handle(cut.verify_body("cd" * 16))
        assert vote["vote"]["verdict"] == "reject"
        assert any("params" in r and "max_tokens" in r for r in vote["vote"]["reasons"]), vote["vote"]["reasons"]
        # the same cut, signed with a matching (small) default: the verifier's own expectation refuses it
        small = dataclasses.replace(defaults, max_tokens=2)
        vote = service.handle(_serve(model, issuer, CHAT, 2, small).verify_body("ef" * 16))
        assert vote["vote"]["verdict"] == "reject"
        assert any("request_defaults.max_tokens" in r for r in vote["vote"]["reasons"]), vote["vote"]["reasons"]
    finally:
        issuer.close()
