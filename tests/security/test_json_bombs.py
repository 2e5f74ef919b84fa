"""Issue 20 §6 (JSON part): JSON from outside never crashes a reader.

Attacker: whoever writes a file an auditor verifies, or sends a body to a verifier node. A JSON
integer longer than 4300 digits makes Python's `json` raise a bare ValueError ("Exceeds the limit
(4300 digits) for integer string conversion"); `1e999` silently becomes infinity. Every reader of
outside JSON goes through `specguard.attest.jsonio.loads_strict`: a typed ParseError (exit 3 on the
command line, HTTP 400 from a server).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from support.asgi import app_client
from support.receipt_factory import Issuer, run_cli

from specguard.attest.jsonio import MAX_INT_DIGITS, loads_strict
from specguard.attest.receipts import ReceiptParseError
from specguard.errors import ParseError

HUGE_INT = "9" * 5000


@pytest.mark.parametrize("text, why", [
    ('{"a": ' + HUGE_INT + "}", "too long"),
    ('{"a": -' + HUGE_INT + "}", "too long"),
    ('{"a": ' + "1" * (MAX_INT_DIGITS + 1) + "}", "too long"),
    ('{"a": 1e999}', "out of range"),
    ('{"a": -1e999}', "out of range"),
    ('{"a": NaN}', "NaN"),
    ('{"a": 1, "a": 2}', "duplicate"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    (b"\xff\xfe{}", "UTF-8"),
])
def test_strict_loader_raises_only_typed_errors(text, why):
    with pytest.raises(ParseError) as caught:
        loads_strict(text, "doc")
    assert why in caught.value.message and caught.value.field is not None


def test_strict_loader_keeps_ordinary_numbers():
    assert loads_strict('{"a": ' + "1" * MAX_INT_DIGITS + ', "b": 1.5e300, "c": -0.0}', "doc")["b"] == 1.5e300


def test_verify_with_a_huge_integer_exits_3(tmp_path, capsys):
    receipt = tmp_path / "receipt.json"
    receipt.write_text('{"receipt_id": ' + HUGE_INT + "}", "utf-8")
    code, out, _ = run_cli(["verify", receipt, "--allow-unpinned", "--json"], capsys)
    assert code == 3
    assert out["error"] == "ReceiptParseError" and "too long" in out["message"]


def test_verify_with_a_huge_integer_in_the_response_exits_3(tmp_path, capsys):
    issuer = Issuer(tmp_path / "home")
    try:
        doc = issuer.issue()
    finally:
        issuer.close()
    import json

    receipt = tmp_path / "receipt.json"
    receipt.write_text(json.dumps(doc), "utf-8")
    response = tmp_path / "response.json"
    response.write_text('{"id": "x", "created": ' + HUGE_INT + "}", "utf-8")
    code, out, _ = run_cli(["verify", receipt, "--response", response, "--trusted-key", issuer.key.public_hex,
                            "--json"], capsys)
    assert code == 3 and out["error"] == "ReceiptParseError"


def test_log_verify_with_a_huge_integer_from_the_log_exits_3(tmp_path, monkeypatch):
    """A log endpoint answering a 5000-digit index: typed parse error, not a crash."""
    from specguard.plugins.receipts import cli as receipts_cli

    class Answer:
        status_code = 200
        content = ('{"consistency_proof": [], "index": ' + HUGE_INT + "}").encode()
        text = content.decode()

    monkeypatch.setattr("specguard.web.http.request", lambda *a, **k: Answer())
    with pytest.raises(ReceiptParseError):
        receipts_cli._get("http://127.0.0.1:9", "/log/proof/consistency")


def test_verifier_node_answers_400_to_a_huge_integer(tmp_path):
    from fastapi import FastAPI

    from specguard.consensus.ratelimit import TokenBuckets
    from specguard.plugins.consensus.routes import add_verifier_routes

    app = FastAPI()
    service = SimpleNamespace(public_info=lambda: {}, handle=lambda body: {"vote": body})
    add_verifier_routes(app, service, TokenBuckets(100.0, 100))
    with app_client(app, raise_server_exceptions=False) as client:
        resp = client.post("/specguard/v1/verify", content='{"nonce": ' + HUGE_INT + "}",
                           headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "too long" in resp.json()["error"]["message"]


def test_serving_node_answers_4xx_to_a_huge_integer(tmp_path):
    from specguard.openai.schema import ChatCompletionRequest
    from specguard.web.base import create_base_app

    app = create_base_app("t")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> dict:
        return {"ok": True}

    body = ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + HUGE_INT + "}")
    with app_client(app, raise_server_exceptions=False) as client:
        resp = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text
