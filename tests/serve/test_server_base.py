"""The one server base (specguard.web.base) under all four apps: the serving node, the
standalone verifier, the drafting server and the simulated audit provider answer in the same
OpenAI error shape, count bodies as they stream in (chunked bodies cannot skip the limit), and
take the same optional bearer auth. Tokenizing happens inside admission control."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.asgi import app_client
from support.servers import make_tiny_model_dir

from specguard.errors import UsageError
from specguard.models import load_model
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node
from specguard.web.base import key_matches, load_api_keys, parse_bearer, server_security

KEY = "base-test-key-0123456789"
SHAPE = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(str(make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-base", context=256)))


@pytest.fixture(scope="module")
def node(model, tmp_path_factory):
    n = Node(model, ServeConfig(drafter="none", home=tmp_path_factory.mktemp("base-home"), served_model_name="tiny",
             max_concurrency=1, max_queue=0))
    yield n
    n.close()


def _apps(model, node, tmp_path_factory, api_keys=()):
    """(name, app, a POST path that reads a JSON body) for each of the four apps."""
    from specguard.audit.simulate import build_app
    from specguard.consensus.verifier_app import VerifierNode
    from specguard.consensus.verifier_app import create_app as verifier_app
    from specguard.policies import load_policy
    from specguard.serve.app import create_app
    from specguard.serve.draft_server import create_draft_app

    verifier = VerifierNode(model, load_policy("dev"), tmp_path_factory.mktemp("verifier-home"))
    apps = [("serve", create_app(node, api_keys=api_keys), "/v1/chat/completions"),
            ("verifier", verifier_app(verifier, api_keys=api_keys), "/specguard/v1/verify"),
            ("draft", create_draft_app(model, "ngram", {}, api_keys=api_keys), "/v1/draft/sessions")]
    if not api_keys:
        apps.append(("simulate", build_app(model), "/v1/chat/completions"))
    return apps


def _chunks(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        sent += n
        yield b" " * n


def test_four_apps_one_error_shape_and_a_streamed_body_limit(model, node, tmp_path_factory):
    from specguard.consensus.config import MAX_BODY_BYTES as VERIFIER_LIMIT
    from specguard.serve.draft_server import MAX_BODY_BYTES as DRAFT_LIMIT
    from specguard.web.base import MAX_BODY_BYTES

    limits = {"serve": MAX_BODY_BYTES, "verifier": VERIFIER_LIMIT, "draft": DRAFT_LIMIT, "simulate": MAX_BODY_BYTES}
    for name, app, path in _apps(model, node, tmp_path_factory):
        with app_client(app) as client:
            missing = client.get("/no/such/route")
            assert missing.status_code == 404 and set(missing.json()["error"]) == SHAPE, name
            wrong = client.delete(path)
            assert wrong.status_code == 405 and set(wrong.json()["error"]) == SHAPE, name
            # declared too large: refused before reading
            declared = client.post(path, content=b"{}", headers={"content-length": str(limits[name] + 1),
                                                                   "content-type": "application/json"})
            assert declared.status_code == 413 and declared.json()["error"]["code"] == "body_too_large", name
            # chunked (no Content-Length): counted as it arrives
            chunked = client.post(path, content=_chunks(limits[name] + 1), headers={"content-type": "application/json"})
            assert chunked.status_code == 413, (name, chunked.text[:200])
            err = chunked.json()["error"]
            assert set(err) == SHAPE and err["code"] == "body_too_large", name
            # a chunked body under the limit is read normally (and judged on its content)
            small = client.post(path, content=_chunks(10), headers={"content-type": "application/json"})
            assert 400 <= small.status_code < 500 and small.status_code != 413, (name, small.text[:200])


def test_three_apps_take_bearer_keys(model, node, tmp_path_factory):
    open_paths = {"serve": "/health", "verifier": "/health", "draft": "/v1/draft/health"}
    for name, app, path in _apps(model, node, tmp_path_factory, api_keys=(KEY,)):
        with app_client(app) as client:
            assert client.get(open_paths[name]).status_code == 200, name
            for headers in ({}, {"Authorization": "Bearer wrong-key-0000000"}):
                resp = client.post(path, json={}, headers=headers)
                assert resp.status_code == 401 and set(resp.json()["error"]) == SHAPE, name
                assert resp.json()["error"]["type"] == "authentication_error"
            resp = client.post(path, json={}, headers={"Authorization": f"Bearer {KEY}"})
            assert resp.status_code != 401, name


def test_tokenizing_happens_inside_admission(node, monkeypatch):
    """With every slot taken and no queue, a request is refused (429) without being tokenized."""
    from specguard.serve.app import create_app

    calls = []
    original = node.model.encode_chat
    monkeypatch.setattr(node.model, "encode_chat", lambda messages: calls.append(1) or original(messages))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2, "temperature": 0}
    with app_client(create_app(node)) as client:
        node.limiter.running += 1  # the only slot is busy, the queue (0) is full
        try:
            busy = client.post("/v1/chat/completions", json=body)
        finally:
            node.limiter.running -= 1
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
        assert calls == []  # refused before the tokenizer ran
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert calls == [1]


def test_prompt_cap_refuses_before_tokenizing(node, monkeypatch):
    from specguard.serve.app import create_app

    calls = []
    original = node.model.encode
    monkeypatch.setattr(node.model, "encode", lambda text: calls.append(1) or original(text))
    with app_client(create_app(node)) as client:
        resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "x" * (node.max_prompt_chars + 1)})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "prompt_too_large"
        chat = client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "y" * node.max_prompt_chars},
                                          {"role": "user", "content": "z"}]})
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    assert calls == []


def test_api_key_helpers():
    assert parse_bearer([(b"authorization", b"Bearer abc")]) == "abc"
    assert parse_bearer([(b"authorization", b"Basic abc")]) is None
    assert parse_bearer([]) is None
    assert key_matches("k" * 10, ["x" * 10, "k" * 10]) and not key_matches("k" * 9, ["k" * 10])
    assert not key_matches(None, ["k" * 10]) and not key_matches("", [""])
    assert load_api_keys(None, None, env={"SPECGUARD_API_KEY": KEY}) == (KEY,)
    assert load_api_keys(KEY, None, env={"SPECGUARD_API_KEY": "other-key-123"}) == (KEY,)
    assert load_api_keys(None, None, env={}) == ()
    with pytest.raises(UsageError):
        load_api_keys("short", None, env={})
    with pytest.raises(UsageError):
        server_security(None, None, "cert.pem", None)


def test_response_store_serves_only_with_the_secret(tmp_path):
    import json
    import stat

    from specguard.serve.responses import ResponseStore

    store = ResponseStore(tmp_path / "responses")
    rid, body = "ab" * 16, {"id": "chatcmpl-1", "choices": []}
    token = store.new_token()
    assert len(token) == 43 and token != store.new_token()
    store.put(rid, body, token)
    assert store.get(rid, token) == body
    for wrong in (None, "", token[:-1], token + "x", store.new_token()):
        assert store.get(rid, wrong) is None
    path = tmp_path / "responses" / rid[:2] / f"{rid}.json"
    assert token not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # a body stored by an older version, without a token digest, is never served
    legacy = "cd" * 16
    (tmp_path / "responses" / "cd").mkdir()
    (tmp_path / "responses" / "cd" / f"{legacy}.json").write_text(json.dumps(body))
    assert store.get(legacy, token) is None and store.get(legacy, "") is None
    with pytest.raises(ValueError):
        store.put(rid, body, "short")
