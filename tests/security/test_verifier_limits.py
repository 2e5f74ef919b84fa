"""Issue 11 §2, §4 and §6, verifier side: who a verifier serves, how much work one request may
cost it, what a slow verifier costs a serving node, and that verifier credentials stay secret.

Every server is a real process (or socket) on 127.0.0.1 started and stopped by the test.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from support.consensus_node import Served, build_body, issue
from support.servers import free_port, make_tiny_model_dir, specguard_cmd, start_process

from specguard.attest.receipts import ReceiptIssuer
from specguard.consensus import quorum
from specguard.consensus.config import ALLOWED_NODES_ENV, redact_url
from specguard.consensus.quorum import ReceiptedResponse, gather_votes, new_nonce, request_certificate
from specguard.consensus.rederive import first_stop_prefix
from specguard.consensus.vote import verify_vote
from specguard.keys import load_or_create_node_key
from specguard.models import load_model
from specguard.openai.schema import CompletionRequest, dump_request
from specguard.transcript import SamplingParams, TokenRecord, Transcript

STOP = "@@never-in-this-output@@"


def fabricated(model, prompt: list[int], n_out: int, stop: tuple[str, ...] = ()) -> tuple[dict, Transcript]:
    """A (request, transcript) pair a node could sign: consistent request/params, made-up output."""
    rng = random.Random(7)
    out = [rng.randrange(100, 5000) for _ in range(n_out)]
    request = {"model": "tiny", "prompt": prompt, "max_tokens": n_out, "temperature": 0}
    if stop:
        request["stop"] = list(stop)
    request_obj = dump_request(CompletionRequest.model_validate(request))
    t = Transcript(model_name="tiny", model_digest=model.digest, tokenizer_digest=model.tokenizer_digest,
                   prompt_ids=list(prompt), output_ids=out,
                   tokens=[TokenRecord(position=i, token_id=tok, logprob=-1.0) for i, tok in enumerate(out)],
                   steps=[], params=SamplingParams(max_tokens=n_out, stop=tuple(stop)), finish_reason="length",
                   drafter="none", text=model.decode(out))
    return request_obj, t


def signed(model, issuer, request_obj: dict, t: Transcript) -> Served:
    body = build_body(model, request_obj, t)
    return Served(t, issue(issuer, t, request_obj, body), request_obj, body)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Verifiers (context 2048): open; allow-listed by --allowed-node; by the env var; rate-limited by policy."""
    root = tmp_path_factory.mktemp("limits")
    model_dir = make_tiny_model_dir(root / "model", seed=5, context=2048)
    node_key = load_or_create_node_key(root / "node")
    stranger = load_or_create_node_key(root / "stranger")
    policy = root / "limited.toml"
    policy.write_text('name = "limited"\n[consensus]\nrate_limit_per_second = 0.0001\nrate_limit_burst = 2\n')
    base = [sys.executable, "-m", "specguard.consensus.verifier_app", "--model", str(model_dir)]
    specs = {
        "open": ([], {}),
        "cli": (["--allowed-node", stranger.public_hex], {}),
        "env": ([], {ALLOWED_NODES_ENV: f"{stranger.public_hex},{node_key.public_hex}"}),
        # outside dev a verifier needs an allow-list (issue 20 §4)
        "limited": (["--policy", str(policy), "--allowed-node", node_key.public_hex], {}),
    }

    def start(name: str):
        port = free_port()
        args, extra = specs[name]
        return name, start_process([*base, "--port", str(port), "--home", str(root / name), *args], port,
                                   env={"OMP_NUM_THREADS": "1", **extra})

    with ThreadPoolExecutor(4) as pool:
        procs = dict(pool.map(start, specs))
    issuer = ReceiptIssuer(root / "node", node_key)
    keys = {name: load_or_create_node_key(root / name).public_bytes for name in specs}
    try:
        yield SimpleNamespace(model=load_model(str(model_dir)), procs=procs, issuer=issuer, keys=keys,
                              url={n: p.url for n, p in procs.items()}, root=root, model_dir=model_dir)
    finally:
        issuer.close()
        for p in procs.values():
            p.stop(timeout=5)


def small(env) -> Served:
    request_obj, t = fabricated(env.model, [1, 2, 3, 4], 8)
    return signed(env.model, env.issuer, request_obj, t)


def openai_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return err


# --- §4: allow-list and rate limit -----------------------------------------------------------------


def test_verifier_judges_only_receipts_of_allowed_serving_nodes(env):
    body = small(env).verify_body(new_nonce())
    err = openai_error(httpx.post(env.url["cli"] + "/specguard/v1/verify", json=body, timeout=60), 403)
    assert err["type"] == "permission_error" and err["param"] == "receipt.predicate.node.public_key"
    assert "does not serve" in err["message"]
    # the environment variable's list includes this node: it gets a signed vote
    resp = httpx.post(env.url["env"] + "/specguard/v1/verify", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    verify_vote(resp.json(), [env.keys["env"]])


def test_allowed_nodes_in_the_policy(env, tmp_path):
    from specguard.consensus.config import allowed_nodes
    from specguard.consensus.service import NodeNotAllowedError, VerifierService
    from specguard.policies.model import policy_from_dict

    other = load_or_create_node_key(tmp_path / "other")
    policy = policy_from_dict({"name": "t", "consensus": {"allowed_nodes": [other.public_hex]}})
    node = SimpleNamespace(model=env.model, policy=policy, node_key=other, consensus={}, attestation_digest="")
    assert allowed_nodes(node) == (other.public_bytes,)
    service = VerifierService.for_node(node)
    with pytest.raises(NodeNotAllowedError) as err:
        service.handle(small(env).verify_body(new_nonce()))
    assert err.value.http_status == 403


def test_verifier_rate_limits_each_client(env):
    url = env.url["limited"] + "/specguard/v1/verify"
    assert httpx.post(url, json={}, timeout=30).status_code == 400  # counted, then refused as malformed
    assert httpx.post(url, json=small(env).verify_body(new_nonce()), timeout=60).status_code == 200
    resp = httpx.post(url, json=small(env).verify_body(new_nonce()), timeout=30)
    err = openai_error(resp, 429)
    assert err["type"] == "rate_limit_error" and int(resp.headers["retry-after"]) >= 1
    # /health is never limited
    assert httpx.get(env.url["limited"] + "/health", timeout=30).status_code == 200


def test_token_buckets_refill_and_stay_bounded():
    from specguard.consensus.ratelimit import RateLimitedError, TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2, max_clients=3, clock=lambda: now[0])
    buckets.take("a")
    buckets.take("a")
    with pytest.raises(RateLimitedError):
        buckets.take("a")
    buckets.take("b")  # per client
    now[0] += 1.0
    buckets.take("a")  # refilled one token
    for c in "cdefg":
        buckets.take(c)
    assert len(buckets._buckets) == 3


# --- §6: bounded work per request ----------------------------------------------------------------


def test_over_context_work_is_refused_before_any_model_work(env):
    request_obj, t = fabricated(env.model, list(range(10, 1510)), 600)  # 2100 > 2048 tokens
    err = openai_error(httpx.post(env.url["open"] + "/specguard/v1/verify",
                                  json=signed(env.model, env.issuer, request_obj, t).verify_body(new_nonce()),
                                  timeout=60), 400)
    assert err["param"] == "transcript.output_ids" and "longer than the model's context" in err["message"]


def test_a_100kb_stop_string_request_is_answered(env):
    request_obj, t = fabricated(env.model, [1, 2, 3, 4], 2000, stop=(STOP, "@@also-not-here@@"))
    body = signed(env.model, env.issuer, request_obj, t).verify_body(new_nonce())
    assert len(json.dumps(body)) > 100_000
    resp = httpx.post(env.url["open"] + "/specguard/v1/verify", json=body, timeout=60)  # generous bound, no timing
    assert resp.status_code == 200, resp.text
    vote = verify_vote(resp.json(), [env.keys["open"]])
    assert vote.verdict == "reject"  # made-up tokens: judged, not stalled


def test_stop_strings_are_found_with_logarithmically_many_decodes(env):
    calls = []

    class Counting:
        def decode(self, ids):
            calls.append(len(ids))
            return env.model.decode(ids)

    out = env.model.encode("word " * 3000)
    assert first_stop_prefix(Counting(), out, (STOP,)) is None and len(calls) == 1
    calls.clear()
    marked = out + env.model.encode(" " + STOP) + out[:50]
    cut = first_stop_prefix(Counting(), marked, (STOP,))
    assert STOP in env.model.decode(marked[:cut]) and STOP not in env.model.decode(marked[: cut - 1])
    assert len(calls) <= 2 + len(marked).bit_length()  # not one decode per prefix


# --- §6: slow verifiers, bounded threads, redacted URLs ----------------------------------------------


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that accepts connections and never answers."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for c in held:
        c.close()
    srv.close()


def checked_of(served: Served) -> ReceiptedResponse:
    return ReceiptedResponse(served.transcript.to_json(), served.receipt, served.request, served.response)


def wait_for_threads(limit: int, seconds: float = 60.0) -> int:
    """Poll until at most `limit` threads run (threads end when their call ends); return the count."""
    deadline = time.monotonic() + seconds
    while threading.active_count() > limit and time.monotonic() < deadline:
        time.sleep(0.1)
    return threading.active_count()


def test_a_verifier_that_never_answers_leaks_no_thread(env, silent_server):
    served = small(env)
    baseline = threading.active_count()
    for _ in range(3):
        got = gather_votes([f"http://{silent_server}"] * 2, checked_of(served), [env.keys["open"]],
                           nonce=new_nonce(), timeout=1.0)
        assert not got.votes and len(got.failures) == 2
    assert wait_for_threads(baseline) <= baseline


def test_in_flight_verifier_calls_are_bounded(env, silent_server, monkeypatch):
    served = small(env)
    monkeypatch.setattr(quorum, "_INFLIGHT", threading.BoundedSemaphore(2))
    got = gather_votes([f"http://{silent_server}"] * 5, checked_of(served), [env.keys["open"]], nonce=new_nonce(),
                       timeout=1.0)
    assert sum("already in flight" in f["error"] for f in got.failures) == 3


def test_verifier_credentials_never_reach_certificates_or_logs(env, silent_server, caplog):
    served = small(env)
    refused = f"127.0.0.1:{free_port()}"
    urls = [f"http://alice:s3cr3t-pw@{silent_server}/", f"http://bob:hunter2@{refused}",
            env.url["open"].replace("http://", "http://carol:t0ps3cret@")]
    with caplog.at_level(logging.DEBUG):
        cert = request_certificate(urls, checked_of(served), [env.keys["open"]], 1, timeout=2.0)
    text = json.dumps(cert) + caplog.text
    for secret in ("s3cr3t-pw", "hunter2", "t0ps3cret", "alice", "bob:", "carol"):
        assert secret not in text
    assert {f["verifier"] for f in cert["failures"]} >= {f"http://{silent_server}/", f"http://{refused}"}
    assert redact_url("https://u:p@h:1/x?q=1") == "https://h:1/x?q=1" and redact_url("http://h/") == "http://h/"


# --- §2: serve --verifier needs trusted keys ------------------------------------------------------


def test_serve_with_verifiers_refuses_to_start_without_keys(env):
    port = free_port()
    res = subprocess.run(specguard_cmd("serve", "--model", str(env.model_dir), "--port", str(port),
                                       "--verifier", env.url["open"], "--quorum", "1"),
                         capture_output=True, text=True, timeout=300, env=_env(env))
    assert res.returncode != 0
    assert "no trusted verifier keys" in res.stderr and "--verifier-key" in res.stderr
    bad = subprocess.run(specguard_cmd("serve", "--model", str(env.model_dir), "--port", str(port), "--verifier",
                                       env.url["open"], "--verifier-key", "not-a-key"),
                         capture_output=True, text=True, timeout=300, env=_env(env))
    assert bad.returncode != 0 and "--verifier-key" in bad.stderr


def test_serve_with_verifier_keys_certifies_with_the_default_quorum(env):
    port = free_port()
    key = env.keys["env"]
    srv = start_process(specguard_cmd("serve", "--model", str(env.model_dir), "--port", str(port), "--verifier",
                                      env.url["env"], "--verifier-key", key.hex(), "--served-model-name", "tiny",
                                      "--log-level", "warning"), port, env=_env(env))
    try:
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, r.text
        cert = r.json()["specguard"]["consensus"]
        # the serving node's key is on the "env" verifier's allow-list: it re-derived and accepted
        assert cert["certified"] and cert["quorum"] == 1 and cert["accepts"] == 1, cert
    finally:
        srv.stop()


def _env(env) -> dict:
    import os

    return {**os.environ, "SPECGUARD_HOME": str(env.root / "stranger"), "OMP_NUM_THREADS": "1"}  # on "env"'s list
