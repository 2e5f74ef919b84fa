"""Authentication and TLS (issue 11 §4) against real server processes on 127.0.0.1.

`specguard serve`, `specguard draft-serve` and the standalone verifier take `--api-key` /
`--api-keys FILE` / `SPECGUARD_API_KEY`: every route but /health and the public log routes needs
`Authorization: Bearer KEY`, answered 401 in OpenAI's error shape otherwise. `--ssl-certfile` /
`--ssl-keyfile` serve HTTPS: a client trusting the test's self-signed CA gets through, one that
does not fails the handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.servers import ServerHandle, free_port, make_tiny_model_dir, specguard_cmd, start_process

MODEL = "tiny"
KEY_A, KEY_B, KEY_ENV = "key-aaaaaaaaaaaaaaaa", "key-bbbbbbbbbbbbbbbb", "key-env-cccccccccccc"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-auth", context=256)


def _serve_args(tiny_dir: Path, port: int, *extra: str) -> list[str]:
    return specguard_cmd("serve", "--model", str(tiny_dir), "--served-model-name", MODEL, "--port", str(port),
                         "--drafter", "none", "--threads", "1", "--log-level", "warning", *extra)


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """A serving node with two keys from --api-keys FILE and a third from SPECGUARD_API_KEY."""
    home = tmp_path_factory.mktemp("auth-home")
    keys = home.parent / "api-keys.txt"
    keys.write_text(f"# operators\n{KEY_A}\n\n{KEY_B}\n")
    port = free_port()
    srv = start_process(_serve_args(tiny_dir, port, "--api-keys", str(keys)), port,
                        env={"SPECGUARD_HOME": str(home), "SPECGUARD_API_KEY": KEY_ENV})
    yield srv
    srv.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers.get("www-authenticate") == "Bearer"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "authentication_error"


def test_no_key_and_wrong_key_get_401_on_every_protected_route(server):
    routes = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
              ("GET", "/v1/models/tiny"), ("GET", "/metrics"), ("GET", "/specguard/v1/responses/" + "0" * 32),
              ("GET", "/specguard/v1/receipts/" + "0" * 32), ("GET", "/specguard/v1/attestation"),
              ("GET", "/openapi.json"), ("GET", "/v2/unknown")]
    for method, path in routes:
        for headers in ({}, _bearer("key-wrong-wrong-wrong"), _bearer(KEY_A + "x"), _bearer(KEY_A[:-1]),
                        {"Authorization": KEY_A}, {"Authorization": f"Basic {KEY_A}"}):
            resp = httpx.request(method, server.url + path, json=CHAT if method == "POST" else None,
                                 headers=headers, timeout=30)
            _assert_401(resp)
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).json()["error"]["code"] == \
        "missing_api_key"
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=_bearer("nope-nope-nope"),
                      timeout=30).json()["error"]["code"] == "invalid_api_key"


def test_a_key_without_a_body_is_refused_before_its_body_is_read(server):
    resp = httpx.post(server.url + "/v1/completions", content=b"x" * (17 * 1024 * 1024),
                      headers={"content-type": "application/json"}, timeout=60)
    _assert_401(resp)


def test_right_keys_get_answers(server):
    for key in (KEY_A, KEY_B, KEY_ENV):
        resp = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=_bearer(key), timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["role"] == "assistant"
    assert httpx.get(server.url + "/v1/models", headers=_bearer(KEY_B), timeout=30).json()["data"][0]["id"] == MODEL


def test_health_and_public_log_routes_stay_open(server):
    health = httpx.get(server.url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["auth"] is True
    checkpoint = httpx.get(server.url + "/specguard/v1/log/checkpoint", timeout=30)
    assert checkpoint.status_code == 200 and checkpoint.text.startswith(health.json()["log_origin"])
    assert httpx.get(server.url + "/specguard/v1/log/entries/0", timeout=30).status_code == 200
    assert httpx.get(server.url + "/specguard/v1/log/proof/consistency?old=0", timeout=30).status_code == 200


def test_draft_server_and_remote_drafter_send_and_check_the_key(tiny_dir, tmp_path):
    from specguard.drafters.health import DrafterHealthRegistry, HealthPolicy
    from specguard.drafters.remote import RemoteDrafter
    from specguard.transcript import SamplingParams

    port = free_port()
    srv = start_process(specguard_cmd("draft-serve", "--model", str(tiny_dir), "--drafter", "ngram",
                                      "--port", str(port), "--api-key", KEY_A),
                        port, health_path="/v1/draft/health")
    try:
        assert httpx.get(srv.url + "/v1/draft/health", timeout=30).status_code == 200  # open
        create = {"prompt_ids": [1, 2, 3, 1, 2], "params": {}}
        _assert_401(httpx.post(srv.url + "/v1/draft/sessions", json=create, timeout=30))
        _assert_401(httpx.post(srv.url + "/v1/draft/sessions", json=create, headers=_bearer(KEY_B), timeout=30))
        ok = httpx.post(srv.url + "/v1/draft/sessions", json=create, headers=_bearer(KEY_A), timeout=30)
        assert ok.status_code == 200 and ok.json()["session"]
        params = SamplingParams(max_tokens=8, temperature=0.0)
        for key, remote_ok in ((KEY_A, True), (None, False)):
            drafter = RemoteDrafter(srv.url, health=HealthPolicy(timeout_seconds=30.0),
                                    registry=DrafterHealthRegistry(), api_key=key)
            drafter.start([1, 2, 3, 1, 2], params)
            drafter.propose([1, 2, 3, 1, 2], 2)
            drafter.finish()
            assert (drafter.stats["remote_steps"] == 1) is remote_ok, drafter.stats
            assert (drafter.stats["failures"] == 0) is remote_ok, drafter.stats
    finally:
        srv.stop()


def test_standalone_verifier_needs_the_key(tiny_dir, tmp_path):
    port = free_port()
    srv = start_process([sys.executable, "-m", "specguard.consensus.verifier_app", "--model", str(tiny_dir),
                         "--port", str(port), "--home", str(tmp_path), "--api-key", KEY_A], port)
    try:
        assert httpx.get(srv.url + "/health", timeout=30).json()["auth"] is True
        for headers in ({}, _bearer(KEY_B)):
            _assert_401(httpx.post(srv.url + "/specguard/v1/verify", json={}, headers=headers, timeout=30))
            _assert_401(httpx.get(srv.url + "/specguard/v1/verifier/key", headers=headers, timeout=30))
        # with the key the request reaches the verifier, which judges the (empty) body: 4xx, not 401
        resp = httpx.post(srv.url + "/specguard/v1/verify", json={}, headers=_bearer(KEY_A), timeout=30)
        assert 400 <= resp.status_code < 500 and resp.status_code != 401, resp.text
        assert httpx.get(srv.url + "/specguard/v1/verifier/key", headers=_bearer(KEY_A), timeout=30).status_code \
            == 200
    finally:
        srv.stop()


# --- TLS ---------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed CA certificate for 127.0.0.1 (IP SAN) and its key, made here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "specguard test 127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _start_https(args: list[str], port: int, ca: Path, log: Path, timeout: float = 120.0) -> ServerHandle:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    handle = ServerHandle(proc, port, log, list(args))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not handle.alive():
            raise RuntimeError(f"server exited with {proc.returncode}:\n{handle.output()}")
        try:
            if httpx.get(f"https://127.0.0.1:{port}/health", verify=_trust(ca), timeout=2.0).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop(timeout=5)
    raise RuntimeError(f"https server not healthy within {timeout} s:\n{handle.output()}")


def test_tls_serving_node_only_trusted_clients_get_through(tiny_dir, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    args = _serve_args(tiny_dir, port, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--api-key", KEY_A)
    srv = _start_https(args, port, cert, tmp_path / "serve.log")
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(verify=_trust(cert), timeout=120) as trusted:
            assert trusted.get(url + "/health").json()["status"] == "ok"
            resp = trusted.post(url + "/v1/chat/completions", json=CHAT, headers=_bearer(KEY_A))
            assert resp.status_code == 200 and resp.json()["specguard"]["receipt_id"]
            _assert_401(trusted.post(url + "/v1/chat/completions", json=CHAT))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            httpx.get(url + "/health", timeout=30)  # the system CA bundle does not know the test CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).raise_for_status()  # no plaintext
    finally:
        srv.stop()


def test_tls_draft_server(tiny_dir, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    args = specguard_cmd("draft-serve", "--model", str(tiny_dir), "--drafter", "ngram", "--port", str(port),
                         "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    with (tmp_path / "draft.log").open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    srv = ServerHandle(proc, port, tmp_path / "draft.log", args)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert srv.alive(), srv.output()
            try:
                resp = httpx.get(f"https://127.0.0.1:{port}/v1/draft/health", verify=_trust(cert), timeout=2.0)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, srv.output()
                time.sleep(0.2)
        assert resp.json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/v1/draft/health", timeout=30)
    finally:
        srv.stop()
