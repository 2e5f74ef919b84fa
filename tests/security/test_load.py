"""Bounded resources under attack (issue 11 §6): a bounded loopback load test against a real
`specguard serve` process. While attack requests are in flight (a 15 MiB prompt, chunked bodies
over the limit, many slow clients holding connections open), `/health` and an honest small
request still answer correctly. Every count is fixed and every wait has a generous timeout; the
test asserts answers and status codes, never latencies.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from support.servers import free_port, make_tiny_model_dir, specguard_cmd, start_process

MODEL = "tiny"
MIB = 1024 * 1024
HONEST = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5,
          "temperature": 0}
N_SLOW = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-load", context=256)
    port = free_port()
    args = specguard_cmd("serve", "--model", str(tiny), "--served-model-name", MODEL, "--port", str(port),
                         "--drafter", "none", "--threads", "1", "--log-level", "warning",
                         "--max-concurrency", "1", "--max-queue", "4",
                         # the gated uploads below pause for as long as the honest requests take
                         "--header-timeout", "600", "--idle-timeout", "600")
    srv = start_process(args, port, env={"SPECGUARD_HOME": str(tmp_path_factory.mktemp("load-home"))})
    yield srv
    srv.stop()


def _gated_body(first: bytes, rest: bytes, gate: threading.Event, started: threading.Event) -> Iterator[bytes]:
    """A chunked body: `first`, then (after `gate` opens) `rest` in 1 MiB pieces."""
    yield first
    started.set()
    gate.wait(timeout=300)
    for i in range(0, len(rest), MIB):
        yield rest[i:i + MIB]


def _post_chunked(url: str, path: str, body: Iterator[bytes], out: dict, name: str) -> None:
    try:
        resp = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=300)
        out[name] = (resp.status_code, resp.json())
    except Exception as exc:  # recorded and asserted on below
        out[name] = (None, repr(exc))


def _slow_client(port: int, kind: str) -> socket.socket:
    """A client that sends part of a request and then nothing (slowloris)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if kind == "headers":
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    else:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\": \"ti")
    return sock


def test_node_keeps_answering_while_attacked(server):
    baseline = httpx.post(server.url + "/v1/chat/completions", json=HONEST, timeout=120)
    assert baseline.status_code == 200
    expected_text = baseline.json()["choices"][0]["message"]["content"]

    gate = threading.Event()
    results: dict = {}
    threads, sockets = [], []
    big = "A" * (15 * MIB)
    big_chat = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": big}], "max_tokens": 4})
    big_completion = json.dumps({"model": MODEL, "prompt": big, "max_tokens": 4})
    attacks = {
        # a 15 MiB prompt, under the body limit: refused by the prompt cap before tokenizing
        "big_chat": ("/v1/chat/completions", big_chat.encode()),
        "big_completion": ("/v1/completions", big_completion.encode()),
        # chunked bodies (no Content-Length) over the 16 MiB limit: cut off while streaming in
        "chunked_over_limit": ("/v1/completions", b'{"model": "tiny", "prompt": "' + b"B" * (20 * MIB) + b'"}'),
        "chunked_garbage": ("/v1/chat/completions", b"\x00" * (18 * MIB)),
    }
    started = {name: threading.Event() for name in attacks}
    try:
        for name, (path, data) in attacks.items():
            body = _gated_body(data[: 2 * MIB], data[2 * MIB:], gate, started[name])
            t = threading.Thread(target=_post_chunked, args=(server.url, path, body, results, name), daemon=True)
            t.start()
            threads.append(t)
        for i in range(N_SLOW):
            sockets.append(_slow_client(server.port, "headers" if i % 2 else "body"))
        for name, event in started.items():
            assert event.wait(timeout=120), f"attack {name} never started sending"

        # every attack is now mid-upload and N_SLOW clients hold connections: the node still answers
        health = httpx.get(server.url + "/health", timeout=120)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        honest = httpx.post(server.url + "/v1/chat/completions", json=HONEST, timeout=300)
        assert honest.status_code == 200, honest.text
        assert honest.json()["choices"][0]["message"]["content"] == expected_text
        assert httpx.get(server.url + "/v1/models", timeout=120).json()["data"][0]["id"] == MODEL
    finally:
        gate.set()
        for t in threads:
            t.join(timeout=300)
        for sock in sockets:
            sock.close()

    assert not any(t.is_alive() for t in threads)
    for name in ("big_chat", "big_completion"):
        status, body = results[name]
        assert status == 400, (name, body)
        assert body["error"]["code"] == "prompt_too_large" and "before tokenizing" in body["error"]["message"]
    for name in ("chunked_over_limit", "chunked_garbage"):
        status, body = results[name]
        # the server answers 413 as soon as the limit passes; a client still sending may see the
        # connection close instead of reading that answer, never a success
        if status is not None:
            assert status == 413, (name, body)
            assert body["error"]["code"] == "body_too_large"
        else:
            assert "Error" in body, (name, body)

    # after the attacks: still healthy, still correct, and the refusals were counted
    assert httpx.get(server.url + "/health", timeout=120).status_code == 200
    again = httpx.post(server.url + "/v1/chat/completions", json=HONEST, timeout=300)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == expected_text
    metrics = httpx.get(server.url + "/metrics", timeout=60).text
    assert 'requests_rejected_total{reason="prompt_too_large"} 2' in metrics


def test_chunked_body_over_the_limit_gets_413(server):
    """No Content-Length: the body is counted as it streams in and refused at 16 MiB."""
    def body() -> Iterator[bytes]:
        for _ in range(17):
            yield b"C" * MIB

    resp = httpx.post(server.url + "/v1/completions", content=body(), headers={"content-type": "application/json"},
                      timeout=300)
    assert "content-length" not in resp.request.headers and resp.request.headers["transfer-encoding"] == "chunked"
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "body_too_large"
    assert httpx.get(server.url + "/health", timeout=60).status_code == 200
