"""`specguard serve` with continuous batching (the default for the built-in engine), as a real process.

8 concurrent clients get exactly the answers the same requests get one at a time, every receipt
verifies against the node's key and the body the client received, a full batch plus a full queue
answers 429, and a client that leaves frees its batch slot.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from support.servers import free_port, make_tiny_model_dir, specguard_cmd, start_process

from specguard.attest.receipts import verify_receipt

MODEL = "tiny"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)


def _serve(tiny_dir: Path, home: Path, *extra: str):
    port = free_port()
    args = specguard_cmd("serve", "--model", str(tiny_dir), "--served-model-name", MODEL, "--port", str(port),
                         "--threads", "1", "--log-level", "warning", *extra)
    return start_process(args, port, env={"SPECGUARD_HOME": str(home)})


def _requests() -> list[tuple[str, dict]]:
    """Eight different requests: chat and completions, greedy and seeded, streamed, stop strings."""
    chat = "/v1/chat/completions"
    comp = "/v1/completions"
    return [
        (chat, {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24,
                "temperature": 0, "logprobs": True, "top_logprobs": 2}),
        (chat, {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 40, "temperature": 0.8,
                "seed": 5}),
        (comp, {"prompt": "The sky is blue and the sea is blue and the sky is", "max_tokens": 32,
                "temperature": 0}),
        (comp, {"prompt": "Once upon a time", "max_tokens": 17, "temperature": 1.0, "seed": 42, "top_p": 0.9,
                "logprobs": 3}),
        (chat, {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0}),
        (comp, {"prompt": "a b c a b c a b", "max_tokens": 48, "temperature": 0, "ignore_eos": True,
                "stop": ["c a"]}),
        (chat, {"messages": [{"role": "user", "content": "Write a haiku."}], "max_tokens": 30, "temperature": 0.5,
                "seed": 9, "stream": True}),
        (comp, {"prompt": "1 2 3 4 5", "max_tokens": 20, "temperature": 0, "ignore_eos": True}),
    ]


def _answer(http: httpx.Client, path: str, body: dict) -> dict:
    """(text, output ids, receipt, body) of one request; a streamed one is read to its end."""
    body = {"model": MODEL, **body}
    if not body.get("stream"):
        resp = http.post(path, json=body)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        choice = out["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return {"text": text, "ids": out["specguard"]["output_ids"], "body": out,
                "finish": choice["finish_reason"]}
    import json

    parts, last = [], None
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for choice in chunk.get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
            if "specguard" in chunk:
                last = chunk
    assert last is not None
    sg = last["specguard"]
    stored = http.get(f"/specguard/v1/responses/{sg['receipt_id']}",
                      headers={"X-Specguard-Response-Token": sg["response_token"]}).json()
    assert stored["choices"][0]["message"]["content"] == "".join(parts)
    return {"text": "".join(parts), "ids": sg["output_ids"], "body": {**stored, "specguard": sg},
            "finish": last["choices"][0]["finish_reason"]}


def test_eight_concurrent_clients_get_the_sequential_answers_with_valid_receipts(tiny_dir, tmp_path):
    srv = _serve(tiny_dir, tmp_path / "home", "--drafter", "ngram", "--max-concurrency", "8", "--max-queue", "8")
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as http:
            health = http.get("/health").json()
            assert health["batching"] is True and health["max_concurrency"] == 8
            key = bytes.fromhex(health["public_key"])
            requests = _requests()
            concurrent: list[dict | None] = [None] * len(requests)
            errors: list[BaseException] = []
            start = threading.Barrier(len(requests))

            def client(i: int) -> None:
                try:
                    with httpx.Client(base_url=srv.url, timeout=600) as own:
                        start.wait(60)
                        concurrent[i] = _answer(own, *requests[i])
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            sequential = [_answer(http, path, body) for path, body in requests]
        for got, want in zip(concurrent, sequential, strict=True):
            assert got is not None
            assert got["ids"] == want["ids"] and got["text"] == want["text"] and got["finish"] == want["finish"]
            body = got["body"]
            receipt = body["specguard"]["receipt"]
            verified = verify_receipt(receipt, trusted_keys=[key], response=body)
            assert verified is not None
    finally:
        srv.stop()


def test_full_batch_and_queue_answer_429_and_leaving_frees_a_slot(tiny_dir, tmp_path):
    srv = _serve(tiny_dir, tmp_path / "home", "--drafter", "none", "--max-concurrency", "2", "--max-queue", "0")
    long_stream = {"model": MODEL, "prompt": "Once", "max_tokens": 4000, "temperature": 0, "stream": True,
                   "ignore_eos": True}
    small = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as a, httpx.Client(base_url=srv.url, timeout=60) as b, \
                httpx.Client(base_url=srv.url, timeout=60) as c:
            with a.stream("POST", "/v1/completions", json=long_stream) as first:
                lines_a = first.iter_lines()
                next(lines_a)  # generating: one of the two batch slots is held
                with b.stream("POST", "/v1/completions", json=long_stream) as second:
                    lines_b = second.iter_lines()
                    next(lines_b)  # both slots held, queue 0
                    busy = c.post("/v1/completions", json=small)
                    assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
                # the second client left: the scheduler drops it at its next iteration and its slot frees
                assert _eventually_served(c, small)
            assert _eventually_served(c, small)
    finally:
        srv.stop()


def _eventually_served(http: httpx.Client, body: dict) -> bool:
    for _ in range(600):
        resp = http.post("/v1/completions", json=body)
        if resp.status_code != 429:
            return resp.status_code == 200
        threading.Event().wait(0.1)
    return False
