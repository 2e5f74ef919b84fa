"""`specguard serve` as a real process on 127.0.0.1 (random port), driven by the official openai
client: chat, completions, streaming, logprobs, receipts checked by the `specguard verify` CLI;
a full queue, a client leaving mid-stream, a dead remote drafter, and kill -9 mid-traffic."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from support.servers import free_port, make_tiny_model_dir, specguard_cmd, start_process

from specguard.attest import merkle
from specguard.attest.checkpoint import verify_checkpoint
from specguard.attest.receipts import verify_receipt

MODEL = "tiny"
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    # a long context lets one stream run long enough to hold the only slot while we probe the queue
    return make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)


def _serve(tiny_dir: Path, home: Path, *extra: str, port: int | None = None):
    port = port or free_port()
    args = specguard_cmd("serve", "--model", str(tiny_dir), "--served-model-name", MODEL, "--port", str(port),
                         "--threads", "1", "--log-level", "warning", *extra)
    return start_process(args, port, env={"SPECGUARD_HOME": str(home)})


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    srv = _serve(tiny_dir, tmp_path_factory.mktemp("home-a"), "--drafter", "none", "--max-concurrency", "1",
                 "--max-queue", "0")
    yield srv
    srv.stop()


def _public_key(url: str) -> str:
    return httpx.get(url + "/health", timeout=10).json()["public_key"]


def _run_verify(jobs: list[tuple[Path, Path]], key: str) -> None:
    procs = [subprocess.Popen(specguard_cmd("verify", str(r), "--response", str(p), "--trusted-key", key),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r, p in jobs]
    for proc, job in zip(procs, jobs, strict=True):
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"specguard verify {job} failed:\n{out}"
        assert "OK receipt" in out


def _save(tmp: Path, name: str, response: dict) -> tuple[Path, Path]:
    receipt_path, response_path = tmp / f"{name}.receipt.json", tmp / f"{name}.response.json"
    receipt_path.write_text(json.dumps(response["specguard"]["receipt"]))
    response_path.write_text(json.dumps(response))
    return receipt_path, response_path


def test_openai_client_chat_completion_streaming_logprobs_and_verify_cli(server, tmp_path):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0,
                                                           logprobs=True, top_logprobs=2)
    chat = raw.parse()
    body = raw.http_response.json()
    assert raw.headers["x-specguard-receipt"] == body["specguard"]["receipt_id"]
    assert chat.choices[0].message.content == body["choices"][0]["message"]["content"]
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)

    raw = client.completions.with_raw_response.create(model=MODEL, prompt="The sky is", max_tokens=8, logprobs=2,
                                                      temperature=0.7, seed=7)
    completion = raw.parse()
    comp_body = raw.http_response.json()
    assert len(completion.choices[0].logprobs.tokens) == completion.usage.completion_tokens

    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0, stream=True,
                                            logprobs=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content
    sg = chunks[-1].model_extra["specguard"]
    stored = httpx.get(f"{server.url}/specguard/v1/responses/{sg['receipt_id']}", timeout=10,
                       headers={"X-Specguard-Response-Token": sg["response_token"]}).json()
    assert stored["choices"][0]["message"]["content"] == streamed
    public = {k: v for k, v in sg["receipt"].items() if k != "disclosure"}  # the secret is the requester's only
    assert httpx.get(f"{server.url}/specguard/v1/receipts/{sg['receipt_id']}", timeout=10).json() == public

    comp_stream = list(client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0.7,
                                                 seed=7, stream=True))
    assert "".join(c.choices[0].text for c in comp_stream if c.choices) == completion.choices[0].text
    sg2 = comp_stream[-1].model_extra["specguard"]
    stored2 = httpx.get(f"{server.url}/specguard/v1/responses/{sg2['receipt_id']}", timeout=10,
                        headers={"X-Specguard-Response-Token": sg2["response_token"]}).json()

    jobs = [_save(tmp_path, "chat", body), _save(tmp_path, "completion", comp_body),
            _save(tmp_path, "chat-stream", {**stored, "specguard": sg}),
            _save(tmp_path, "completion-stream", {**stored2, "specguard": sg2})]
    _run_verify(jobs, _public_key(server.url))


def test_full_queue_429_and_disconnect_frees_the_slot(server):
    # ignore_eos: a random model's greedy path may reach EOS on another CPU; this stream must hold the slot
    long_stream = {"model": MODEL, "prompt": "Once", "max_tokens": 4000, "temperature": 0, "stream": True,
                   "ignore_eos": True}
    small = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        before = _disconnects(http)
        with http.stream("POST", "/v1/completions", json=long_stream) as resp:
            assert resp.status_code == 200
            # keep the line iterator alive: a discarded one is closed, and closing it drops the
            # connection, which the server rightly treats as the client leaving (and frees the slot)
            lines = resp.iter_lines()
            next(lines)  # generating: the only slot is held
            busy = http.post("/v1/completions", json=small)
            assert busy.status_code == 429
            assert busy.json()["error"]["type"] == "rate_limit_error"
        # the client left mid-stream: the engine stops and the slot comes back
        assert _eventually_served(http, small)
        assert _disconnects(http) == before + 1
        # a non-streaming client that gives up is noticed too
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json={**long_stream, "stream": False}, timeout=0.5)
        assert _eventually_served(http, small)
        assert _disconnects(http) == before + 2


def _eventually_served(http: httpx.Client, body: dict) -> bool:
    for _ in range(600):
        resp = http.post("/v1/completions", json=body)
        if resp.status_code != 429:
            return resp.status_code == 200
        threading.Event().wait(0.1)
    return False


def _disconnects(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('specguard:requests_rejected_total{reason="client_disconnected"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_dead_remote_drafter_still_serves_identical_outputs(server, tiny_dir, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    remote = _serve(tiny_dir, tmp_path / "home-remote", "--drafter", "remote", "--drafter-url", dead)
    try:
        requests = [
            ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 24, "temperature": 0}),
            ("/v1/completions", {"model": MODEL, "prompt": "One two three", "max_tokens": 24, "temperature": 0.8,
                                 "seed": 99}),
        ]
        for path, req in requests:
            got = httpx.post(remote.url + path, json=req, timeout=120)
            want = httpx.post(server.url + path, json=req, timeout=120)
            assert got.status_code == want.status_code == 200, got.text
            assert got.json()["specguard"]["output_ids"] == want.json()["specguard"]["output_ids"]
            assert got.json()["choices"][0] == want.json()["choices"][0]
        assert remote.alive()
    finally:
        remote.stop()


def test_kill9_mid_traffic_keeps_every_acknowledged_receipt(tiny_dir, tmp_path):
    home = tmp_path / "home-crash"
    port = free_port()
    srv = _serve(tiny_dir, home, "--drafter", "ngram", port=port)
    receipts: list[dict] = []
    stop = threading.Event()
    enough = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                i += 1
                req = {"model": MODEL, "prompt": f"Request {i}:", "max_tokens": 16, "temperature": 0.5, "seed": i}
                try:
                    if i % 2:
                        resp = http.post("/v1/completions", json=req)
                        if resp.status_code == 200:
                            receipts.append(resp.json()["specguard"]["receipt"])
                    else:
                        with http.stream("POST", "/v1/completions", json={**req, "stream": True}) as resp:
                            for line in resp.iter_lines():
                                if line.startswith("data: {") and '"specguard"' in line:
                                    receipts.append(json.loads(line[6:])["specguard"]["receipt"])
                except httpx.HTTPError:
                    return  # the server died under us
                if len(receipts) >= 6:
                    enough.set()

    worker = threading.Thread(target=traffic, daemon=True)
    try:
        worker.start()
        assert enough.wait(timeout=300), srv.output()
        srv.kill9()
        worker.join(timeout=60)
    finally:
        stop.set()
        srv.stop()
    assert not worker.is_alive()

    restarted = _serve(tiny_dir, home, "--drafter", "ngram", port=port)
    try:
        key_hex = _public_key(restarted.url)
        key = bytes.fromhex(key_hex)
        note = httpx.get(restarted.url + "/specguard/v1/log/checkpoint", timeout=10).text
        current = verify_checkpoint(note, [key])
        assert current.size >= len(receipts)
        for receipt in receipts:
            stored = httpx.get(f"{restarted.url}/specguard/v1/receipts/{receipt['receipt_id']}", timeout=10)
            assert stored.status_code == 200 and stored.json() == {k: v for k, v in receipt.items() if k != "disclosure"}
            verify_receipt(receipt, trusted_keys=[key])
            old = verify_checkpoint(receipt["log"]["checkpoint"], [key])
            proof = httpx.get(restarted.url + "/specguard/v1/log/proof/consistency",
                              params={"old": old.size, "new": current.size}, timeout=10).json()
            merkle.verify_consistency(old.size, current.size, old.root, current.root,
                                      [bytes.fromhex(h) for h in proof["consistency_proof"]])
        first = tmp_path / "first-checkpoint.txt"
        first.write_text(receipts[0]["log"]["checkpoint"])
        check = subprocess.run(specguard_cmd("log", "verify", "--url", restarted.url, "--key", key_hex,
                                             "--checkpoint", str(first), "--entries", str(current.size)),
                               capture_output=True, text=True, timeout=180)
        assert check.returncode == 0, check.stdout + check.stderr
        after = httpx.post(restarted.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                           timeout=60)
        assert after.status_code == 200
        assert after.json()["specguard"]["receipt"]["log"]["index"] == current.size
    finally:
        restarted.stop()
