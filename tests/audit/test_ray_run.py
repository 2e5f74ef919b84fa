"""`audit run --ray`: what the driver hands its Ray workers (no Ray cluster needed here).

A Ray worker is another process, maybe on another machine: the trust the driver's `--cacert` (or a
policy's [tls] table) set in the driver does not exist there. The query actors are built from
`query_actor_kwargs(cfg)` alone, so here they are built in a process whose trust is reset to the
system CAs, as a worker's is, against a provider served over TLS by a private CA on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from support.audit_loopback import loopback
from support.tls import PrivateCA, mint_private_ca

from specguard.audit.ray_run import ProviderQuery, query_actor_kwargs
from specguard.audit.run import AuditConfig
from specguard.web import http

ANSWER = {"id": "x", "object": "chat.completion", "model": "claimed",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


def _provider() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> dict:
        return ANSWER

    @app.post("/v1/completions")
    async def completions() -> dict:
        return {**ANSWER, "object": "text_completion", "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]}

    return app


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return mint_private_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_url(private_ca: PrivateCA) -> Iterator[str]:
    with loopback(_provider(), tls=private_ca) as url:
        yield url


@pytest.fixture(autouse=True)
def system_trust() -> Iterator[None]:
    """Each test starts, and leaves, with the system CAs trusted (the process-wide default)."""
    previous = http.trust_cas(http.TrustedCAs())
    yield
    http.trust_cas(previous)


def _ask_in_a_worker(kwargs: dict) -> dict:
    """Build a query actor where only the system CAs are trusted (a Ray worker's process) and send one request."""
    http.trust_cas(http.TrustedCAs())
    actor = ProviderQuery(**json.loads(json.dumps(kwargs)))  # what Ray ships: plain data, no driver state
    batch = {"index": [0], "body": [json.dumps({"messages": [{"role": "user", "content": "hello"}]})], "cached": [""]}
    try:
        out = actor(batch)
    finally:
        actor.client.close()  # no keep-alive connection left to hold the server's shutdown
    records = json.loads(out["records"][0])
    return {"answer": json.loads(out["answer"][0]) if out["answer"][0] else None, "records": records}


def _config(url: str, **kw) -> AuditConfig:
    return AuditConfig(base_url=url, model="claimed", reference="unused", max_retries=0, timeout=10, **kw)


def test_ray_query_workers_trust_the_drivers_cacert(tls_url, private_ca):
    """`audit run --ray --cacert ca.pem`: the workers' provider calls trust the private CA too."""
    http.trust_cas(http.TrustedCAs(default=str(private_ca.ca)))  # what --cacert does in the driver
    kwargs = query_actor_kwargs(_config(tls_url))
    result = _ask_in_a_worker(kwargs)
    assert result["answer"] == ANSWER, result["records"]


def test_ray_query_workers_trust_the_policys_ca_for_the_provider_url(tls_url, private_ca, tmp_path):
    """A per-URL CA (the policy's [tls.cacerts]) reaches the workers, as PEM: the driver's file is not needed there."""
    copy = tmp_path / "provider-ca.pem"
    copy.write_bytes(private_ca.ca.read_bytes())
    other = mint_private_ca(tmp_path / "other", name="some-other-ca")
    http.trust_cas(http.TrustedCAs(default=str(other.ca), per_url=((tls_url.removesuffix("/v1"), str(copy)),)))
    kwargs = query_actor_kwargs(_config(tls_url))
    copy.unlink()  # the worker may run on a machine without the driver's files
    assert _ask_in_a_worker(kwargs)["answer"] == ANSWER


def test_ray_query_workers_refuse_a_provider_the_driver_does_not_trust(tls_url, tmp_path):
    """Fail closed: without the provider's CA the workers' TLS verification fails (no answer, no fallback)."""
    other = mint_private_ca(tmp_path / "other", name="some-other-ca")
    for trust in (http.TrustedCAs(), http.TrustedCAs(default=str(other.ca))):
        http.trust_cas(trust)
        result = _ask_in_a_worker(query_actor_kwargs(_config(tls_url)))
        assert result["answer"] is None
        assert "CERTIFICATE_VERIFY_FAILED" in result["records"][0]["error"]


def test_ray_query_workers_ask_the_configured_endpoint(tls_url, private_ca):
    """`--ray --endpoint completions`: the workers POST to /completions, as the local run does."""
    http.trust_cas(http.TrustedCAs(default=str(private_ca.ca)))
    result = _ask_in_a_worker(query_actor_kwargs(_config(tls_url, endpoint="completions")))
    assert result["records"][0]["status"] == 200
    assert result["answer"]["object"] == "text_completion"
