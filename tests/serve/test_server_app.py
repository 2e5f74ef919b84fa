"""The HTTP server in-process (tests/support/asgi.py app_client) on a tiny random model with the real tokenizer:
response shapes, receipts, streaming, every kind of bad request, the queue limit, metrics."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.asgi import app_client
from support.servers import make_tiny_model_dir

from specguard.attest.receipts import verify_receipt
from specguard.models import load_model
from specguard.serve.admission import ConcurrencyLimiter
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node
from specguard.web.errors import QueueFullError
from specguard.web.metrics import Counter, Histogram

MODEL = "tiny"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)
    home = tmp_path_factory.mktemp("server-home")
    n = Node(load_model(str(tiny)), ServeConfig(drafter="ngram", home=home, served_model_name=MODEL, max_model_len=256,
             max_queue=0))
    yield n
    n.close()


@pytest.fixture(scope="module")
def client(node):
    with app_client(create_app(node)) as c:
        yield c


def resp_headers_token(sg: dict) -> bool:
    return isinstance(sg.get("response_token"), str) and len(sg["response_token"]) >= 43


def _chat(client, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 12,
            "temperature": 0}
    body.update(kw)
    return client.post("/v1/chat/completions", json=body)


def _stream(client, path, body) -> tuple[list[dict], list[str]]:
    chunks, raw = [], []
    with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                continue
            raw.append(line)
            assert line.startswith("data: ")
            if line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert raw[-1] == "data: [DONE]"
    return chunks, raw


def test_chat_response_shape_logprobs_and_receipt(client, node):
    resp = _chat(client, logprobs=True, top_logprobs=3)
    assert resp.status_code == 200
    body = resp.json()
    sg = body["specguard"]
    assert resp.headers["X-Specguard-Receipt"] == sg["receipt_id"] == sg["receipt"]["receipt_id"]
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == len(sg["output_ids"])
    assert body["usage"]["prompt_tokens"] == len(sg["prompt_ids"])
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] <= 0 and all(t["logprob"] <= 0 for t in entry["top_logprobs"])
    verified = verify_receipt(sg["receipt"], trusted_keys=[node.public_key_bytes], response=body)
    assert verified.receipt_id == sg["receipt_id"]
    public = {k: v for k, v in sg["receipt"].items() if k != "disclosure"}  # the secret goes to the requester only
    assert client.get(f"/specguard/v1/receipts/{sg['receipt_id']}").json() == public
    assert resp_headers_token(sg)
    stored = client.get(f"/specguard/v1/responses/{sg['receipt_id']}",
                        headers={"X-Specguard-Response-Token": sg["response_token"]}).json()
    assert stored == {k: v for k, v in body.items() if k != "specguard"}
    # without the requester's secret nobody reads it back
    assert client.get(f"/specguard/v1/responses/{sg['receipt_id']}").status_code == 401
    assert client.get(f"/specguard/v1/responses/{sg['receipt_id']}",
                      headers={"X-Specguard-Response-Token": "A" * 43}).status_code == 404
    # never in the URL (access logs keep URLs): refused even with the right token
    assert client.get(f"/specguard/v1/responses/{sg['receipt_id']}?token={sg['response_token']}").status_code == 400


def test_stream_equals_non_stream_and_verifies(client, node):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 16,
            "temperature": 0, "logprobs": True, "stream": True, "stream_options": {"include_usage": True}}
    chunks, _ = _stream(client, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    streamed_tokens = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                       for e in c["choices"][0]["logprobs"]["content"]]
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(streamed_tokens)
    sg = last["specguard"]
    plain = _chat(client, messages=body["messages"], max_tokens=16, logprobs=True).json()
    assert text == plain["choices"][0]["message"]["content"]
    assert sg["output_ids"] == plain["specguard"]["output_ids"]
    stored = client.get(f"/specguard/v1/responses/{sg['receipt_id']}",
                        headers={"X-Specguard-Response-Token": sg["response_token"]}).json()
    assert stored["choices"][0]["message"]["content"] == text
    assert stored["choices"][0]["logprobs"]["content"] == streamed_tokens
    verify_receipt(sg["receipt"], trusted_keys=[node.public_key_bytes], response=stored)


def test_completion_token_prompt_logprobs_and_stop(client, node):
    # ignore_eos: 20 tokens of text whatever this CPU's greedy path is (a random model may hit EOS early)
    base = {"model": MODEL, "prompt": [1, 2, 3, 400, 5000], "max_tokens": 20, "temperature": 0, "logprobs": 2,
            "ignore_eos": True}
    full = client.post("/v1/completions", json=base).json()
    choice = full["choices"][0]
    assert full["usage"]["completion_tokens"] == 20 and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert full["object"] == "text_completion" and len(lp["tokens"]) == full["usage"]["completion_tokens"]
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    verify_receipt(full["specguard"]["receipt"], trusted_keys=[node.public_key_bytes], response=full)
    text = choice["text"]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"need a visible stop string in {text!r}"
    cut = client.post("/v1/completions", json={**base, "stop": [stop]}).json()
    assert cut["choices"][0]["text"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    chunks, _ = _stream(client, "/v1/completions", {**base, "stop": stop, "stream": True})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == text[: text.find(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible_and_seed_is_recorded(client):
    a = _chat(client, temperature=0.9, seed=1234).json()
    b = _chat(client, temperature=0.9, seed=1234).json()
    assert a["specguard"]["output_ids"] == b["specguard"]["output_ids"]
    unseeded = _chat(client, temperature=0.9).json()
    import base64

    from specguard.attest.receipts import parse_statement

    payload = base64.b64decode(unseeded["specguard"]["receipt"]["envelope"]["payload"])
    assert "params" not in parse_statement(payload)["predicate"]  # sealed: only the requester reads them
    assert isinstance(unseeded["specguard"]["receipt"]["disclosure"]["sealed"]["params"]["seed"], int)


TOO_LONG = list(range(1, 300))

BAD_REQUESTS = [
    ("malformed json", "/v1/chat/completions", b'{"model": "tiny", "messages": [', 400, "malformed JSON"),
    ("not utf-8", "/v1/completions", b'{"model": "\xff\xfe"}', 400, ""),
    ("body is a list", "/v1/completions", [], 400, "JSON object"),
    ("unknown model", "/v1/completions", {"model": "gpt-9", "prompt": "hi"}, 404, "not served"),
    ("missing messages", "/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("empty messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("bad role", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("prompt over context", "/v1/completions", {"model": MODEL, "prompt": TOO_LONG}, 400, "context length"),
    ("max_tokens zero", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens over room", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 10**6}, 400,
     "max_tokens"),
    ("max_tokens string", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "5"}, 400, "max_tokens"),
    ("max_tokens bool", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": True}, 400, "max_tokens"),
    ("temperature string", "/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": "hot"}, 400,
     "temperature"),
    ("temperature range", "/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": 7}, 400, "temperature"),
    ("top_p zero", "/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("n=2", "/v1/completions", {"model": MODEL, "prompt": "hi", "n": 2}, 400, "'n'"),
    ("negative seed", "/v1/completions", {"model": MODEL, "prompt": "hi", "seed": -1}, 400, "seed"),
    ("ignore_eos string", "/v1/completions", {"model": MODEL, "prompt": "hi", "ignore_eos": "yes"}, 400, "ignore_eos"),
    ("completion logprobs 6", "/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    ("top_logprobs 21", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs"),
    ("top_logprobs without logprobs", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ("five stop strings", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": list("abcde")}, 400, "stop"),
    ("empty stop", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ""}, 400, "stop"),
    ("token id outside vocab", "/v1/completions", {"model": MODEL, "prompt": [10**9]}, 400, "vocabulary"),
    ("batch of prompts", "/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt"),
    ("unsupported field", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools are not supported"),
    ("echo", "/v1/completions", {"model": MODEL, "prompt": "hi", "echo": True}, 400, "echo"),
    ("stream not bool", "/v1/completions", {"model": MODEL, "prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("image part", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400,
     "content"),
]


@pytest.mark.parametrize(("path", "payload", "status", "needle"), [c[1:] for c in BAD_REQUESTS],
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_4xx_naming_the_problem(client, path, payload, status, needle):
    if isinstance(payload, bytes):
        resp = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        resp = client.post(path, json=payload)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert needle in err["message"]


def test_unknown_route_wrong_method_and_wrong_content_type(client):
    nf = client.get("/v2/nothing")
    assert nf.status_code == 404 and nf.json()["error"]["code"] == "not_found"
    wm = client.get("/v1/chat/completions")
    assert wm.status_code == 405 and wm.json()["error"]["code"] == "method_not_allowed"
    plain = client.post("/v1/completions", content=b"hello", headers={"content-type": "text/plain"})
    assert 400 <= plain.status_code < 500 and "error" in plain.json()
    assert client.get("/specguard/v1/responses/../../etc").status_code == 404
    assert client.get("/specguard/v1/responses/" + "0" * 32,
                      headers={"X-Specguard-Response-Token": "A" * 43}).status_code == 404
    assert client.get("/v1/models/nope").status_code == 404
    huge = client.post("/v1/completions", content=b" " * (16 * 1024 * 1024 + 1),
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"


def test_full_queue_answers_429(client, node):
    # max_concurrency 1, max_queue 0: with the only slot taken, a request is refused at once
    node.limiter.running += 1
    try:
        resp = _chat(client)
    finally:
        node.limiter.running -= 1
    assert resp.status_code == 429
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert _chat(client).status_code == 200


def test_limiter_bounds_running_and_waiting():
    async def scenario() -> list[str]:
        limiter = ConcurrencyLimiter(max_concurrency=1, max_queue=1)
        events = []
        await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        assert limiter.waiting == 1
        with pytest.raises(QueueFullError) as info:
            await limiter.acquire()
        events.append(str(info.value.http_status))
        limiter.release()
        await waiter
        events.append(f"{limiter.running} running, {limiter.waiting} waiting")
        limiter.release()
        return events

    assert asyncio.run(scenario()) == ["429", "1 running, 0 waiting"]


def test_models_health_and_metrics(client, node):
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == MODEL and models["data"][0]["digest"] == node.model.digest
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["key_id"] == node.key_id and health["max_context"] == 256
    _chat(client)
    text = client.get("/metrics").text
    for name in ("specguard:request_success_total", "specguard:generation_tokens_total",
                 "specguard:spec_decode_num_draft_tokens_total", "specguard:spec_decode_num_accepted_tokens_total",
                 "specguard:e2e_request_latency_seconds_bucket", "specguard:receipt_seconds_count",
                 "specguard:num_requests_running", "specguard:requests_rejected_total"):
        assert name in text
    schema = client.get("/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]
    assert schema["components"]["schemas"]["CompletionRequest"]["properties"]["model"]["enum"] == [MODEL]


def test_metrics_exposition_format():
    c = Counter("x:requests_total", "Requests.", ["reason"])
    c.inc(reason='a"b')
    c.inc(2, reason="ok")
    h = Histogram("x:latency_seconds", "Latency.", [0.1, 1.0])
    h.observe(0.5)
    lines = c.render() + h.render()
    assert 'x:requests_total{reason="a\\"b"} 1' in lines and 'x:requests_total{reason="ok"} 2' in lines
    assert 'x:latency_seconds_bucket{le="0.1"} 0' in lines and 'x:latency_seconds_bucket{le="+Inf"} 1' in lines
    assert "x:latency_seconds_sum 0.5" in lines and "x:latency_seconds_count 1" in lines
    assert lines[:2] == ["# HELP x:requests_total Requests.", "# TYPE x:requests_total counter"]


def test_text_deltas_hold_back_partial_characters_and_stop_prefixes(node):
    from specguard.openai.streaming import TextDeltas

    text = "naïve 日本語 text, then STOP here"
    ids = node.model.encode(text)
    deltas = TextDeltas(node.model, ("STOP",))
    sent = "".join(deltas.push([t]) for t in ids)
    final = text[: text.find("STOP")]
    assert "\ufffd" not in sent and final.startswith(sent)
    assert sent + deltas.finish(final) == final
    plain = TextDeltas(node.model, ())
    assert "".join(plain.push([t]) for t in ids) + plain.finish(text) == text


def test_deeply_nested_json_is_a_400_not_a_crash(client):
    """A body nested 100k deep must be refused cleanly. (py_ecc raises the recursion limit on
    import; with that limit the C JSON decoder overflowed the stack and killed the process.)"""
    import sys

    from specguard.plugin_manager import load_plugins

    load_plugins()
    assert sys.getrecursionlimit() <= 10_000
    for body in (b"[" * 100_000, b'{"messages": ' + b"[" * 100_000):
        r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/health").status_code == 200
