"""Outbound calls trust a private CA given with --cacert (or a policy's [tls] table), and only then.

A real private CA is minted with `cryptography`; a real uvicorn server on 127.0.0.1 serves TLS
with a certificate it issued. Without the CA every outbound client refuses the server
(CERTIFICATE_VERIFY_FAILED), `SSL_CERT_FILE` included; with it, each command reaches the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from support.servers import free_port
from support.tls import mint_ca, mint_server_cert

from specguard.audit.client import ClientOptions, ProviderClient
from specguard.cli import _register_plugin_commands, cli
from specguard.consensus import quorum
from specguard.drafters.health import DrafterHealthRegistry
from specguard.drafters.remote import RemoteDrafter
from specguard.errors import OutboundError, SpecguardError
from specguard.transcript import SamplingParams
from specguard.web import http

VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


def _stub_app() -> FastAPI:
    """Answers like a node that has nothing yet: 404 JSON everywhere but /health and the checkpoint."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/specguard/v1/log/checkpoint", response_class=PlainTextResponse)
    async def checkpoint() -> str:
        return "not a signed checkpoint\n"

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def anything(path: str) -> JSONResponse:
        return JSONResponse({"error": {"message": f"no route /{path}"}}, status_code=404)

    return app


@dataclass(frozen=True)
class TLSServer:
    url: str
    ca: Path
    other_ca: Path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    folder = tmp_path_factory.mktemp("private-ca")
    ca_path, ca, ca_key = mint_ca(folder, "specguard-test-ca")
    other_ca, _, _ = mint_ca(folder, "some-other-ca")
    cert, key = mint_server_cert(folder, ca, ca_key)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_stub_app(), host="127.0.0.1", port=port, ssl_certfile=str(cert),
                                           ssl_keyfile=str(key), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    while thread.is_alive() and not server.started:
        started.wait(0.05)
    assert server.started, "the TLS test server did not start"
    yield TLSServer(f"https://127.0.0.1:{port}", ca_path, other_ca)
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(autouse=True)
def system_trust() -> Iterator[None]:
    """Each test starts, and leaves, with the system CAs trusted (the process-wide default)."""
    previous = http.trust_cas(http.TrustedCAs())
    yield
    http.trust_cas(previous)


def _get(url: str, cacert: str | None = None) -> http.Response:
    with http.client(timeouts=http.Timeouts.of(10), cacert=cacert) as client:
        return http.request(client, "GET", url + "/health")


def test_cacert_trusts_the_private_ca_and_only_it(tls_server):
    assert _get(tls_server.url, str(tls_server.ca)).json() == {"status": "ok"}
    for cacert in (None, str(tls_server.other_ca)):
        with pytest.raises(OutboundError, match=VERIFY_FAILED):
            _get(tls_server.url, cacert)


def test_ssl_cert_file_is_ignored(tls_server, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_server.ca))
    with pytest.raises(OutboundError, match=VERIFY_FAILED):
        _get(tls_server.url)


def test_a_file_that_is_not_a_ca_is_refused_naming_the_option(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(OutboundError) as info:
        http.client(cacert=str(junk))
    assert info.value.field == "cacert" and str(junk) in str(info.value.got)


def test_policy_tls_table_picks_a_ca_per_url(tls_server, tmp_path):
    url = tls_server.url
    cas = http.TrustedCAs.from_policy({"cacerts": {url: "ca.pem", url + "/v1": "/abs/ca-v1.pem"}},
                                      base=str(tmp_path))
    assert cas.for_url(url + "/specguard/v1/verify") == str(tmp_path / "ca.pem")
    assert cas.for_url(url + "/v1/draft/sessions") == "/abs/ca-v1.pem"  # the longest prefix wins
    assert cas.for_url(url.replace("https", "http")) is None and cas.for_url("https://127.0.0.2:1") is None
    assert http.TrustedCAs.from_policy({"cacert": "all.pem"}, default="cli.pem").for_url(url) == "cli.pem"
    with pytest.raises(OutboundError, match="tls.cacertz"):
        http.TrustedCAs.from_policy({"cacertz": "x.pem"})
    http.trust_cas(http.TrustedCAs(per_url=((url, str(tls_server.ca)),)))
    with pytest.raises(SpecguardError, match="answered HTTP 404"):  # reached: TLS verified with the URL's CA
        quorum._post_one(url, {}, 10.0)


def _run(*args: str) -> tuple[int, str]:
    _register_plugin_commands()
    result = CliRunner().invoke(cli, list(args))
    exc = result.exception
    text = result.output + (exc.summary() if isinstance(exc, SpecguardError) else repr(exc) if exc else "")
    return result.exit_code, text


def test_log_verify_and_show_take_cacert(tls_server, tmp_path):
    for command in (["log", "verify", "--url", tls_server.url, "--key", "00" * 32], ["log", "show", "--url", tls_server.url]):
        code, text = _run(*command)
        assert code != 0 and VERIFY_FAILED in text and "cannot reach the log" in text
        assert text.count("field=") == 1 and text.count("got=") == 1, text
        code, text = _run(*command[:2], "--cacert", str(tls_server.ca), *command[2:])
        assert VERIFY_FAILED not in text and "cannot reach the log" not in text, text
        # reached over verified TLS: `show` prints the stub's checkpoint, `verify` refuses it
        assert ("not a signed checkpoint" in text) if command[1] == "show" else code != 0


def test_verifier_calls_take_the_cacert(tls_server):
    with pytest.raises(SpecguardError, match=VERIFY_FAILED):
        quorum._post_one(tls_server.url, {}, 10.0)
    with pytest.raises(SpecguardError, match=VERIFY_FAILED):
        quorum.fetch_verifier_key(tls_server.url)
    http.trust_cas(http.TrustedCAs(default=str(tls_server.ca)))
    with pytest.raises(SpecguardError, match="answered HTTP 404"):
        quorum._post_one(tls_server.url, {}, 10.0)
    with pytest.raises(SpecguardError, match="no valid public key"):
        quorum.fetch_verifier_key(tls_server.url)


def test_audit_client_takes_the_cacert(tls_server, tmp_path):
    http.trust_cas(http.TrustedCAs(default=str(tls_server.ca)))
    client = ProviderClient(tls_server.url + "/v1", "m", log_path=tmp_path / "raw.jsonl",
                            options=ClientOptions(timeout=10, max_retries=0))
    answer = http.request(client._http, "GET", tls_server.url + "/health")
    assert answer.json() == {"status": "ok"}


def _drafter_error(url: str) -> str:
    drafter = RemoteDrafter(url, registry=DrafterHealthRegistry())
    drafter.start([1, 2, 3], SamplingParams(max_tokens=4))
    try:
        drafter.propose([1, 2, 3], 2)
    finally:
        drafter.finish()
    return str(drafter.stats["last_error"])


def test_remote_drafter_takes_the_cacert(tls_server):
    assert VERIFY_FAILED in _drafter_error(tls_server.url)
    http.trust_cas(http.TrustedCAs(default=str(tls_server.ca)))
    error = _drafter_error(tls_server.url)
    assert VERIFY_FAILED not in error and "HTTP error" in error  # reached the server over verified TLS


@pytest.mark.parametrize("command", [["serve"], ["log", "verify"], ["log", "show"], ["consensus", "check"],
                                     ["audit", "run"], ["audit", "monitor", "baseline"], ["audit", "monitor", "check"],
                                     ["generate"]])
def test_every_outbound_command_documents_cacert(command):
    code, text = _run(*command, "--help")
    assert code == 0 and "--cacert" in text and "SSL_CERT_FILE is ignored" in " ".join(text.split())


def test_serve_reads_a_ca_per_url_from_the_policy_file(tls_server, tmp_path):
    """`specguard serve --policy FILE`: the policy's [tls] table, relative to the file, adds to --cacert."""
    from specguard.serve.cli import _trust_policy_cas

    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "verifiers-ca.pem").write_bytes(tls_server.ca.read_bytes())
    policy = folder / "node.toml"
    policy.write_text(f'name = "tls-test"\n[tls]\ncacerts = {{ "{tls_server.url}" = "verifiers-ca.pem" }}\n')
    http.trust_cas(http.TrustedCAs(default=str(tls_server.other_ca)))  # as --cacert would
    _trust_policy_cas(str(policy))
    assert http.cacert_for(tls_server.url + "/specguard/v1/verify") == str(folder / "verifiers-ca.pem")
    assert http.cacert_for("https://127.0.0.1:1/") == str(tls_server.other_ca)  # --cacert for every other URL
    with pytest.raises(SpecguardError, match="answered HTTP 404"):  # the verifier call now trusts the URL's CA
        quorum._post_one(tls_server.url, {}, 10.0)
