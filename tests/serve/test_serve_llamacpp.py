"""`specguard serve --engine llamacpp` as a real process on 127.0.0.1: a chat request is answered
by llama.cpp on the default model's GGUF, with a receipt that verifies and names the engine, its
version and the GGUF's SHA-256."""

from __future__ import annotations

import hashlib
import os
import subprocess

import httpx
import pytest
from support.servers import free_port, specguard_cmd, start_process

from specguard.attest.receipts import verify_receipt
from specguard.models import resolve

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("home-llamacpp")
    args = specguard_cmd("serve", "--engine", "llamacpp", "--threads", "1", "--port", str(port),
                         "--log-level", "warning")
    srv = start_process(args, port, env={"SPECGUARD_HOME": str(home)}, timeout=300)
    yield srv
    srv.stop()


def test_chat_is_answered_with_a_receipt_naming_engine_version_and_gguf(server):
    import llama_cpp

    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["engine"] == {"name": "llamacpp", "version": f"llama-cpp-python {llama_cpp.__version__}"}
    body = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": health["model"], "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
    }).json()
    assert body["choices"][0]["message"]["content"]
    assert len(body["choices"][0]["logprobs"]["content"]) == body["usage"]["completion_tokens"]
    receipt = body["specguard"]["receipt"]
    verified = verify_receipt(receipt, trusted_keys=[bytes.fromhex(health["public_key"])], response=body)
    _, gguf = resolve(None)
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert verified.predicate["engine"] == {"name": "llamacpp", "version": f"llama-cpp-python {llama_cpp.__version__}",
                                            "model_file_digest": digest}
    # seeded sampling over HTTP: the same seed gives the same answer
    sampled = {"model": health["model"], "messages": [{"role": "user", "content": "Say something."}],
               "max_tokens": 8, "temperature": 1.0, "seed": 3}
    first = httpx.post(server.url + "/v1/chat/completions", timeout=120, json=sampled).json()
    second = httpx.post(server.url + "/v1/chat/completions", timeout=120, json=sampled).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_an_unknown_engine_is_refused_at_start_naming_the_engines(tmp_path):
    proc = subprocess.run(specguard_cmd("serve", "--engine", "nope", "--port", str(free_port())), timeout=300,
                          capture_output=True, text=True, env={**os.environ, "SPECGUARD_HOME": str(tmp_path)})
    assert proc.returncode != 0
    assert "unknown engine" in proc.stderr and "llamacpp" in proc.stderr and "specguard" in proc.stderr
