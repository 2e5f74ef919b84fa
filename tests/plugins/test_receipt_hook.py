"""Receipt issuing is one hook (`issue_receipt`), implemented by the receipts plugin; hooks get a
typed NodeContext; plugins never attach services to the node."""

from __future__ import annotations

import importlib

import pytest
from fastapi import FastAPI
from support.asgi import app_client
from support.servers import make_tiny_model_dir

from specguard.context import NodeContext
from specguard.hookspecs import hookimpl
from specguard.models import load_model
from specguard.plugin_manager import load_plugins, pm
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node

RECEIPTS = "specguard.plugins.receipts"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-hook", context=256)
    n = Node(load_model(str(tiny)), ServeConfig(drafter="none", home=tmp_path_factory.mktemp("hook-home"),
             served_model_name="tiny"))
    yield n
    n.close()


def test_node_and_verifier_node_implement_node_context(node, tmp_path):
    from specguard.consensus.verifier_app import VerifierNode

    assert isinstance(node, NodeContext)
    verifier = VerifierNode(node.model, node.policy, tmp_path)
    assert isinstance(verifier, NodeContext)
    assert verifier.receipts is None and verifier.responses is None


def test_issue_receipt_hook_gets_the_response_and_a_node_context(node):
    """A plugin answering issue_receipt first decides the receipt; the built-in one is not called."""
    seen: dict = {}

    class OtherIssuer:
        @hookimpl(tryfirst=True)
        def issue_receipt(self, transcript, request, response, evidence, node, receipt_id):
            seen.update(request=request, response=response, evidence=evidence, node=node, transcript=transcript,
                        receipt_id=receipt_id)
            return {"receipt_id": receipt_id, "envelope": {"payload": "x"}, "log": {}}

    load_plugins()
    size_before = node.receipts.log.size
    pm.register(OtherIssuer(), name="other-issuer")
    try:
        with app_client(create_app(node)) as client:
            body = client.post("/v1/chat/completions", json=CHAT).json()
    finally:
        pm.unregister(name="other-issuer")
    assert body["specguard"]["receipt_id"] == seen["receipt_id"]  # the id chosen before sealing
    assert isinstance(seen["node"], NodeContext) and seen["node"] is node
    assert seen["request"]["messages"][0]["content"] == "Hi." and seen["request"]["max_tokens"] == 4
    assert seen["response"]["choices"] == body["choices"]  # the body the receipt covers, without "specguard"
    assert "specguard" not in seen["response"]
    assert "attestation" in seen["evidence"]  # sealed before issuing
    assert node.receipts.log.size == size_before  # firstresult: the built-in issuer did not run


def test_with_the_receipts_plugin_blocked_the_server_serves_and_says_so(node):
    load_plugins()
    module = importlib.import_module(RECEIPTS)
    pm.set_blocked(RECEIPTS)
    try:
        with app_client(create_app(node)) as client:
            health = client.get("/health").json()
            resp = client.post("/v1/chat/completions", json=CHAT)
            log_route = client.get("/specguard/v1/log/checkpoint")
    finally:
        pm.unblock(RECEIPTS)
        pm.register(module, name=RECEIPTS)
    assert health["receipts"] is False and any("receipt" in w for w in health["warnings"])
    assert resp.status_code == 200
    body = resp.json()
    assert body["choices"][0]["message"]["content"] is not None
    assert body["specguard"]["receipt_id"] is None and "receipt" not in body["specguard"]
    assert "x-specguard-receipt" not in resp.headers and "response_token" not in body["specguard"]
    assert log_route.status_code == 404  # the log routes belong to the blocked plugin
    with app_client(create_app(node)) as client:  # unblocked again: receipts are back
        assert client.get("/health").json()["receipts"] is True
        assert client.post("/v1/chat/completions", json=CHAT).json()["specguard"]["receipt_id"]


def test_receipt_routes_never_attach_an_issuer_to_the_node(tmp_path):
    """A node given no issuer gets no log routes; the plugin does not create one and set node.receipts."""
    from specguard.keys import load_or_create_node_key
    from specguard.plugins.receipts import issue_receipt, routes

    key = load_or_create_node_key(tmp_path)
    bare = NodeContext(model=None, policy=None, home=tmp_path, node_key=key, role="verifier")  # type: ignore[arg-type]
    app = FastAPI()
    routes.register(app, bare)
    assert bare.receipts is None
    assert not any(getattr(r, "path", "").startswith("/specguard/v1/log") for r in app.routes)
    assert issue_receipt(transcript=None, request={}, response={}, evidence={}, node=bare, receipt_id="ab" * 16) is None
