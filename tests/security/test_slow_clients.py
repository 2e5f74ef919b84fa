"""Issue 20 §4: slow and greedy clients against every server (serve, verifier, draft-serve, simulator).

The attack: ~1000 half-sent request heads from one client (under the usual 1024-descriptor limit)
made `serve` reset every new connection, `/health` included; the API key does not help, it is
checked after the head. Each test opens more half-open sockets than a limit, from real sockets on
127.0.0.0/8 (every address there is loopback, so one test is many clients), holds them, and asserts
that `/health` and an honest request from another address still answer. Counts are fixed, every
wait has a generous deadline, and no assertion is about how long anything took.
"""

from __future__ import annotations

import sys

import httpx
import pytest
from support.servers import free_port, make_tiny_model_dir, specguard_cmd, start_process
from support.slowloris import answered, half_open

MODEL = "tiny"
HONEST = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4,
          "temperature": 0}
CAP = 8  # --max-connections-per-client
LIMIT = 32  # --max-connections
EXTRA = 100  # sockets beyond the limit


def client(source: str) -> httpx.Client:
    """An HTTP client whose connections come from loopback address `source`."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-slow", context=256)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """`specguard serve` with small limits and timeouts far longer than any test (nothing here waits on them)."""
    port = free_port()
    args = specguard_cmd("serve", "--model", str(tiny), "--served-model-name", MODEL, "--port", str(port),
                         "--drafter", "none", "--threads", "1", "--log-level", "info",
                         "--max-connections", str(LIMIT), "--max-connections-per-client", str(CAP),
                         "--header-timeout", "600", "--idle-timeout", "600")
    srv = start_process(args, port, env={"SPECGUARD_HOME": str(tmp_path_factory.mktemp("slow-home"))})
    yield srv
    srv.stop()


def _close(sockets) -> None:
    for sock in sockets:
        sock.close()


def _honest_answers(url: str, source: str) -> None:
    with client(source) as http:
        health = http.get(url + "/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        honest = http.post(url + "/v1/chat/completions", json=HONEST)
        assert honest.status_code == 200, honest.text
        assert honest.json()["choices"][0]["message"]["content"] is not None


def test_one_client_cannot_take_every_connection(server):
    """CAP + 100 half-open heads from one address: CAP are held, the rest answered 429 and closed."""
    sockets = [half_open(server.port, "127.0.0.11") for _ in range(CAP + EXTRA)]
    try:
        refused = answered(sockets, EXTRA)
        assert len(refused) == EXTRA
        # each was answered 429 and closed (a client that already sent bytes may see the reset instead)
        assert all(d == b"" or d.startswith(b"HTTP/1.1 429 ") for d in refused.values())
        # the CAP held ones are still open, and everyone else is served meanwhile
        _honest_answers(server.url, "127.0.0.12")
        probe = half_open(server.port, "127.0.0.11", b"")  # the same client gets nothing more
        data = answered([probe], 1)[probe]
        probe.close()
        assert data.startswith(b"HTTP/1.1 429 ") and b'"too_many_connections"' in data
        assert not set(sockets[:CAP]) & set(refused)  # the first CAP are the ones held
    finally:
        _close(sockets)


def test_many_clients_over_the_limit_evict_half_open_connections(server):
    """LIMIT + 100 half-open heads from 17 addresses (each under the per-client cap): when the server
    is full, the connection that waited longest for its head is closed, so new clients get in."""
    sockets = [half_open(server.port, f"127.0.1.{1 + i // CAP}") for i in range(LIMIT + EXTRA)]
    try:
        evicted = answered(sockets, EXTRA)
        assert len(evicted) == EXTRA
        assert set(evicted) <= set(sockets[:EXTRA + CAP])  # the oldest went first (a few may be held still)
        assert all(d == b"" for d in evicted.values())
        _honest_answers(server.url, "127.0.0.13")
        _honest_answers(server.url, "127.0.0.13")
    finally:
        _close(sockets)


def test_an_oversized_request_head_gets_431(server):
    sock = half_open(server.port, "127.0.0.14", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000)
    try:
        data = answered([sock], 1)[sock]
        assert data.startswith(b"HTTP/1.1 431 ") and b'"header_too_large"' in data
    finally:
        sock.close()
    _honest_answers(server.url, "127.0.0.14")


def test_response_token_never_reaches_the_access_log(server):
    """A secret sent as ?token= (old clients) is refused, and the access log shows it redacted."""
    secret = "S3cr3tT0ken" + "x" * 32
    with client("127.0.0.15") as http:
        resp = http.get(f"{server.url}/specguard/v1/responses/{'0' * 32}?token={secret}")
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "token_in_query" and "X-Specguard-Response-Token" in err["message"]
        # /health logs a line after the one above: when it is in the log, so is the token request's
        http.get(server.url + "/health?api_key=" + secret)
    log = server.output()
    assert "/specguard/v1/responses/" in log and "api_key=<redacted>" in log
    assert secret not in log


@pytest.fixture(scope="module")
def short_timeouts(tiny, tmp_path_factory):
    port = free_port()
    args = specguard_cmd("serve", "--model", str(tiny), "--served-model-name", MODEL, "--port", str(port),
                         "--drafter", "none", "--threads", "1", "--log-level", "warning",
                         "--header-timeout", "1", "--idle-timeout", "1")
    srv = start_process(args, port, env={"SPECGUARD_HOME": str(tmp_path_factory.mktemp("slow-home-2"))})
    yield srv
    srv.stop()


def test_a_half_sent_head_or_a_stalled_body_is_closed(short_timeouts):
    """Header and idle timeouts: the server closes both (within a generous deadline; nothing here
    asserts when), the head with 408."""
    head = half_open(short_timeouts.port, "127.0.0.16")
    body = half_open(short_timeouts.port, "127.0.0.16", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ")
    try:
        closed = answered([head, body], 2)
        assert len(closed) == 2
        assert closed[head].startswith(b"HTTP/1.1 408 ") and b'"header_timeout"' in closed[head]
        assert not closed[body].startswith(b"HTTP/1.1 2")
    finally:
        _close([head, body])
    _honest_answers(short_timeouts.url, "127.0.0.16")


def _other_server(kind: str, tiny, home) -> tuple[list[str], str]:
    port = free_port()
    limits = ["--max-connections-per-client", "4", "--header-timeout", "600"]
    if kind == "verifier":
        return [sys.executable, "-m", "specguard.consensus.verifier_app", "--model", str(tiny), "--port", str(port),
                "--home", str(home), *limits], "/health"
    if kind == "draft-serve":
        return specguard_cmd("draft-serve", "--model", str(tiny), "--drafter", "ngram", "--port", str(port),
                             *limits), "/v1/draft/health"
    return specguard_cmd("audit", "simulate", "--reference", str(tiny), "--port", str(port)), "/health"


@pytest.mark.parametrize("kind", ["verifier", "draft-serve", "simulate"])
def test_every_server_caps_connections_per_client(kind, tiny, tmp_path):
    args, health = _other_server(kind, tiny, tmp_path / "home")
    port = int(args[args.index("--port") + 1])
    srv = start_process(args, port, env={"SPECGUARD_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"},
                        health_path=health)
    cap = 4 if kind != "simulate" else 64  # the simulator runs with the defaults
    sockets = []
    try:
        sockets = [half_open(port, "127.0.0.21") for _ in range(cap + 20)]
        refused = answered(sockets, 20)
        assert len(refused) == 20 and not set(sockets[:cap]) & set(refused)
        probe = half_open(port, "127.0.0.21", b"")
        sockets.append(probe)
        assert answered([probe], 1)[probe].startswith(b"HTTP/1.1 429 ")
        with client("127.0.0.22") as http:
            assert http.get(srv.url + health).status_code == 200
    finally:
        _close(sockets)
        srv.stop()
