"""Attacks on stored answers (issue 11 §3) against a real `specguard serve` process on 127.0.0.1.

- A log reader walks the public transparency log to every receipt id and asks for the body: refused.
- The requester reads it back with the per-response secret it alone received.
- A body a judge withholds (consensus `on_no_quorum = "withhold"`) is neither stored nor served.
- A stream under `withhold` sends no token before the verdict.
- Response files and keys under $SPECGUARD_HOME are 0600 in 0700 folders.
"""

from __future__ import annotations

import base64
import json
import stat
from importlib import resources
from pathlib import Path

import httpx
import pytest
from support.servers import free_port, make_tiny_model_dir, start_process
from support.withhold_plugin import WITHHOLD_MAX_TOKENS, plugin_serve_cmd

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "Tell me a secret about colours."}]
TOKEN_HEADER = "X-Specguard-Response-Token"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-privacy", context=256)


@pytest.fixture(scope="module")
def withhold_policy(tmp_path_factory) -> Path:
    dev = resources.files("specguard.policies").joinpath("presets", "dev.toml").read_text("utf-8")
    path = tmp_path_factory.mktemp("policy") / "withhold.toml"
    assert 'on_no_quorum = "flag"' in dev
    path.write_text(dev.replace('on_no_quorum = "flag"', 'on_no_quorum = "withhold"', 1), "utf-8")
    return path


@pytest.fixture(scope="module")
def server(tiny_dir, withhold_policy, tmp_path_factory):
    """A node whose (test) judge withholds every response asked with max_tokens == 7."""
    home = tmp_path_factory.mktemp("privacy-home")
    port = free_port()
    args = plugin_serve_cmd("serve", "--model", str(tiny_dir), "--served-model-name", MODEL, "--port", str(port),
                            "--drafter", "none", "--threads", "1", "--log-level", "warning",
                            "--policy", str(withhold_policy))
    srv = start_process(args, port, env={"SPECGUARD_HOME": str(home)})
    srv.home = home
    yield srv
    srv.stop()


def _chat(url: str, max_tokens: int = 6, **kw) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0, **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def _log_receipt_ids(url: str) -> list[str]:
    """What any log reader can do: walk every public log entry to its receipt id."""
    size = int(httpx.get(url + "/specguard/v1/log/checkpoint", timeout=10).text.splitlines()[1])
    ids = []
    for i in range(size):
        entry = httpx.get(f"{url}/specguard/v1/log/entries/{i}", timeout=10).json()
        statement = json.loads(base64.b64decode(entry["envelope"]["payload"]))
        ids.append(statement["predicate"]["receipt_id"])
    return ids


def _stored_files(home: Path) -> list[Path]:
    return [p for p in (home / "responses").rglob("*") if p.is_file()]


def test_health_says_streams_are_held(server):
    assert httpx.get(server.url + "/health", timeout=10).json()["hold_streams"] is True


def test_log_reader_cannot_fetch_a_body_but_the_requester_can(server):
    resp = _chat(server.url)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    sg = body["specguard"]
    token = sg["response_token"]
    assert resp.headers[TOKEN_HEADER] == token and len(token) >= 43  # 32 random bytes
    rid = sg["receipt_id"]
    assert rid in _log_receipt_ids(server.url)  # the receipt id is public ...
    url = f"{server.url}/specguard/v1/responses/{rid}"
    # ... the body is not: no token, a guessed token, a token of another response, the token as bearer
    no_token = httpx.get(url, timeout=10)
    assert no_token.status_code == 401 and no_token.json()["error"]["code"] == "missing_response_token"
    for guess in ("A" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), token[:20]):
        for attempt in (httpx.get(url, headers={TOKEN_HEADER: guess}, timeout=10),
                        httpx.get(url, headers={"Authorization": f"Bearer {guess}"}, timeout=10)):
            assert attempt.status_code == 404, attempt.text
            assert set(attempt.json()["error"]) == {"message", "type", "param", "code"}
            assert "choices" not in attempt.text
    other = _chat(server.url, max_tokens=5).json()["specguard"]
    assert httpx.get(url, headers={TOKEN_HEADER: other["response_token"]}, timeout=10).status_code == 404
    # the requester reads it back, by header only (a ?token= is refused: URLs end up in access logs)
    got = httpx.get(url, headers={TOKEN_HEADER: token}, timeout=10)
    assert got.status_code == 200
    assert got.json() == {k: v for k, v in body.items() if k != "specguard"}
    assert httpx.get(url, params={"token": token}, timeout=10).status_code == 400
    # the token is stored only as a digest
    assert all(token not in p.read_text("utf-8") for p in _stored_files(server.home))


def test_a_withheld_body_is_neither_sent_stored_nor_served(server):
    before_files = set(_stored_files(server.home))
    before_ids = set(_log_receipt_ids(server.url))
    resp = _chat(server.url, max_tokens=WITHHOLD_MAX_TOKENS)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert "withheld" in err["message"] and "choices" not in resp.json()
    assert TOKEN_HEADER.lower() not in resp.headers and "x-specguard-receipt" not in resp.headers
    new_ids = set(_log_receipt_ids(server.url)) - before_ids
    assert len(new_ids) == 1  # its receipt was logged (the verifiers needed it) ...
    rid = new_ids.pop()
    assert set(_stored_files(server.home)) == before_files  # ... but its body was never stored
    assert not (server.home / "responses" / rid[:2] / f"{rid}.json").exists()
    got = httpx.get(f"{server.url}/specguard/v1/responses/{rid}", headers={TOKEN_HEADER: "A" * 43}, timeout=10)
    assert got.status_code == 404


def test_streaming_under_withhold_leaks_no_token_before_the_verdict(server):
    # the same request the non-streaming way shows what the text would be
    withheld = {"stream": True, "max_tokens": WITHHOLD_MAX_TOKENS}
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=120,
                      json={"model": MODEL, "messages": MESSAGES, "temperature": 0, **withheld}) as resp:
        raw = b"".join(resp.iter_bytes())
    assert resp.status_code == 422, raw[:300]
    assert not resp.headers["content-type"].startswith("text/event-stream")
    assert b"data:" not in raw and b"chat.completion.chunk" not in raw and b"delta" not in raw
    assert "withheld" in json.loads(raw)["error"]["message"]
    # an accepted stream is held until the verdict and then delivered whole, with its secret
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=120,
                      json={"model": MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": 6,
                            "stream": True}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert resp.status_code == 200 and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    sg = chunks[-1]["specguard"]
    assert sg["test_judge"] == "accepted" and resp.headers[TOKEN_HEADER] == sg["response_token"]
    stored = httpx.get(f"{server.url}/specguard/v1/responses/{sg['receipt_id']}",
                       headers={TOKEN_HEADER: sg["response_token"]}, timeout=10).json()
    assert stored["choices"][0]["message"]["content"] == text


def test_response_and_key_files_are_private(server):
    assert _chat(server.url).status_code == 200
    home = server.home
    folders = [home / "responses", *[p for p in (home / "responses").rglob("*") if p.is_dir()], home / "keys"]
    files = [*_stored_files(home), home / "keys" / "node.key"]
    assert len(files) >= 2
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
