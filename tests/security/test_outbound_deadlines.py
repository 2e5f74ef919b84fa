"""Every outbound call has a hard deadline for the whole exchange (issue 11 §6, issue 10).

Attacker: a remote drafter, verifier, log or audited provider that answers one byte per second
(a slow-loris peer: each read returns within any per-read timeout, the exchange never ends).
Real raw-socket servers on 127.0.0.1 started by each test. The assertions are on behaviour (the
call returned or raised the typed error, the output is the target's, no thread is left over),
with only a generous upper bound on elapsed time.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.slowloris import RawServer, answer, drip, self_signed_tls
from support.tiny import tiny_model

from specguard.audit.client import ClientOptions, ProviderClient
from specguard.consensus.quorum import _post_one, fetch_verifier_key
from specguard.drafters.base import NoDrafter
from specguard.drafters.health import DrafterHealthRegistry, HealthPolicy
from specguard.drafters.remote import RemoteDrafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import ConfigError, DeadlineExceeded, OutboundError, ResponseTooLarge, SpecguardError
from specguard.transcript import SamplingParams
from specguard.web import http

GENEROUS = 30.0  # the only time bound asserted: far above every deadline used here


def _threads() -> int:
    return threading.active_count()


def test_slow_headers_hit_the_deadline_not_the_read_timeout():
    with RawServer(drip(interval=0.5)) as server:
        baseline = _threads()
        client = http.client(timeouts=http.Timeouts(connect=5, read=5, write=5, pool=5, total=1.5))
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            http.request(client, "GET", server.url + "/x")
        assert time.monotonic() - start < GENEROUS
        client.close()
        assert server.seen, "the request reached the slow server"
        assert info.value.url == server.url + "/x"
        assert _threads() == baseline, "no thread outlives the request"


def test_slow_body_hits_the_deadline_and_size_cap_holds():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n"
    with RawServer(drip(head=head, body=b"x" * 64, interval=0.5)) as server:
        # the headers arrive at the drip rate too; the deadline covers headers and body together
        with http.client() as client, pytest.raises(DeadlineExceeded):
            http.request(client, "GET", server.url, timeout=1.0)
    with RawServer(answer(body=b"y" * 5000)) as server, http.client() as client:
        with pytest.raises(ResponseTooLarge, match="too large"):
            http.request(client, "GET", server.url, max_bytes=1000)
        assert http.request(client, "GET", server.url, max_bytes=5000).content == b"y" * 5000


def test_remote_drafter_step_gives_up_and_output_is_the_targets():
    target = tiny_model(seed=3, vocab_size=96, scale=4.0)
    params = SamplingParams(max_tokens=12)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    expected = SpeculativeEngine(target).generate(prompt, params).output_ids
    with RawServer(drip(interval=1.0)) as server:
        baseline = _threads()
        policy = HealthPolicy(timeout_seconds=1.0, max_consecutive_failures=2, cooldown_seconds=600)
        drafter = RemoteDrafter(server.url, fallback=NoDrafter(), health=policy, registry=DrafterHealthRegistry())
        start = time.monotonic()
        transcript = SpeculativeEngine(target, drafter).generate(prompt, params)
        assert time.monotonic() - start < GENEROUS
        assert transcript.output_ids == expected, "the drafter can only slow a step, never change or stall it"
        assert drafter.stats["failures"] == 2 and drafter.stats["fallback_steps"] > 0
        assert "DeadlineExceeded" in drafter.stats["last_error"]
        assert _threads() == baseline, "no thread outlives its request"


def test_audit_client_gives_up_within_the_deadline_and_logs_a_clean_error(tmp_path):
    with RawServer(drip(interval=1.0)) as server:
        baseline = _threads()
        url = f"http://user:hunter2@127.0.0.1:{server.port}/v1"
        client = ProviderClient(url, "m", log_path=tmp_path / "raw.jsonl",
                                options=ClientOptions(timeout=1.0, max_retries=1, sleep=lambda s: None))
        start = time.monotonic()
        assert client.chat({"messages": []}) is None
        assert time.monotonic() - start < GENEROUS
        client.close()
        assert client.stats["failures"] == 1 and client.stats["attempts"] == 2
        raw = (tmp_path / "raw.jsonl").read_text()
        assert "DeadlineExceeded" in raw and "hunter2" not in raw and "user:" not in raw
        assert server.seen[0].headers.get("authorization", "").startswith("Basic "), "credentials are used, not shown"
        assert _threads() == baseline


def test_consensus_vote_and_key_fetch_are_bounded():
    with RawServer(drip(interval=1.0)) as server:
        with pytest.raises(SpecguardError, match="timed out"):
            _post_one(server.url, {"x": 1}, timeout=1.0)
        with pytest.raises(ConfigError, match="cannot fetch"):
            fetch_verifier_key(server.url, timeout=1.0)


def test_redirects_are_not_followed():
    with RawServer(answer(body=b'{"public_key": "' + b"ab" * 32 + b'"}')) as elsewhere:
        moved = answer("302 Found", b"", {"Location": elsewhere.url + "/specguard/v1/verifier/key"})
        with RawServer(moved) as server:
            with http.client() as client:
                resp = http.request(client, "GET", server.url + "/a")
            assert resp.status_code == 302, "a 3xx is returned as an answer, never followed"
            with pytest.raises(ConfigError):
                fetch_verifier_key(server.url, timeout=5.0)
            drafter = RemoteDrafter(server.url, fallback=NoDrafter(), registry=DrafterHealthRegistry(),
                                    health=HealthPolicy(timeout_seconds=5.0))
            drafter.start([1, 2], SamplingParams(max_tokens=4))
            assert drafter.propose([1, 2], 2).tokens == [] and drafter.stats["failures"] == 1
            drafter.finish()
        assert elsewhere.seen == [], "the redirect target was never contacted"


def test_environment_proxies_are_ignored(monkeypatch):
    with RawServer(answer(body=b"{}")) as proxy, RawServer(answer(body=b'{"ok": true}')) as target:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with http.client() as client:
            assert http.request(client, "GET", target.url + "/direct").json() == {"ok": True}
        assert proxy.seen == [] and [s.line for s in target.seen] == ["GET /direct HTTP/1.1"]


def test_credentials_never_appear_in_errors():
    url = "http://alice:s3cr3t@127.0.0.1:9/path?api_key=k3y&index=2#frag"
    assert http.redact_url(url) == "http://127.0.0.1:9/path?api_key=REDACTED&index=2"
    with http.client(timeouts=http.Timeouts.of(2.0)) as client:
        with pytest.raises(OutboundError) as info:
            http.request(client, "GET", url)
    text = str(info.value) + repr(info.value.to_dict()) + info.value.diagnostics()
    assert "s3cr3t" not in text and "alice" not in text and "k3y" not in text
    with pytest.raises(SpecguardError) as vote:
        _post_one("http://alice:s3cr3t@127.0.0.1:9", {}, timeout=2.0)
    assert "s3cr3t" not in str(vote.value)
    with pytest.raises(ConfigError) as key:
        fetch_verifier_key("http://alice:s3cr3t@127.0.0.1:9", timeout=2.0)
    assert "s3cr3t" not in str(key.value) + key.value.diagnostics()


def test_tls_uses_the_given_ca_bundle_only(tmp_path):
    context, ca_path = self_signed_tls(tmp_path)
    with RawServer(answer(body=b'{"ok": true}'), tls=context) as server:
        with http.client(verify=ca_path) as client:
            assert http.request(client, "GET", server.url + "/x").json() == {"ok": True}
        with http.client() as client, pytest.raises(OutboundError, match="CERTIFICATE_VERIFY_FAILED"):
            http.request(client, "GET", server.url + "/x")  # system CAs do not know the test CA
    with RawServer(drip(interval=0.5), tls=context) as server, http.client(verify=ca_path) as client:
        with pytest.raises(DeadlineExceeded):
            http.request(client, "GET", server.url, timeout=1.0)  # the deadline holds over TLS too
    with pytest.raises(OutboundError, match="CA bundle"):
        http.client(verify=str(tmp_path / "missing.pem"))
