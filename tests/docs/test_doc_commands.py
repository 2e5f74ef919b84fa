"""Command examples of the docs, run as printed (see tests/support/doc_blocks.py for what may change)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.doc_blocks import PrintedServer, example, printed_commands, run_sh, start_printed
from support.paths import ROOT, SHARED
from support.servers import free_port


@pytest.mark.skipif(not (SHARED / "vectors" / "tee").is_dir(), reason="the shared TEE vectors are not beside the repo")
def test_attestation_vector_examples_run_as_printed():
    """docs/attestation.md's `attest verify` examples, from the repository root (paths as printed)."""
    script = example("docs/attestation.md", "verify_shared_vectors")
    done = run_sh(script, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r'"tcb_status":\s*"UpToDate"', done.stdout), done.stdout
    assert re.search(r"^validated: True$", done.stdout, re.M), done.stdout

    # what the closing comment says of --policy strict, checked on the last command
    last = script[script.rindex("specguard attest verify"):script.index("\n# ... while")]
    strict = run_sh(last.replace("--policy dev", "--policy strict") + " || exit $?", ROOT)
    assert strict.returncode == 5 and "revocation not checked" in strict.stderr, strict.stderr
    bare = run_sh(re.sub(r"--reference-values \S+", "", last.replace("--policy dev", "--policy strict")), ROOT)
    assert bare.returncode == 5 and "reference values required" in bare.stderr, bare.stderr


@pytest.mark.model
def test_readme_generate_examples_run_as_printed(tmp_path):
    """`specguard generate` on the default model: a chat answer, then the metrics of a seeded sample."""
    done = run_sh(example("README.md", "generate"), tmp_path, env={"SPECGUARD_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads(done.stdout[done.stdout.rindex("\n{"):])
    assert metrics["output_tokens"] > 0


def _tls_files(folder: Path) -> None:
    """keys.txt, and cert.pem/key.pem: a self-signed certificate for 127.0.0.1 (also written as ca.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "cert.pem").write_bytes(pem)
    (folder / "ca.pem").write_bytes(pem)
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (folder / "keys.txt").write_text("doc-example-key-1\n", "utf-8")


@pytest.mark.model
@pytest.mark.parametrize(("doc", "name"), [("README.md", "serve_overrides"), ("README.md", "operator_serve"),
                                           ("docs/server.md", "serve")])
def test_serve_examples_start_as_printed(tmp_path, doc, name):
    """Each `serve` line of the block starts on the default model and answers /health; a line that ends
    in `&` keeps running for the lines after it (the remote drafter). Only ports and --host change."""
    _tls_files(tmp_path)
    ports = {8000: free_port(), 9000: free_port()}
    background: list[PrintedServer] = []
    try:
        for command in printed_commands(example(doc, name)):
            env = {"SPECGUARD_HOME": str(tmp_path / f"home-{len(background)}")}
            health = "/v1/draft/health" if " draft-serve " in command else "/health"
            server = start_printed(command, tmp_path, ports, env, health_path=health)
            if command.endswith("&"):
                background.append(server)
                continue
            banner = server.handle.output()
            server.handle.stop()
            assert "specguard serving" in banner or "draft" in banner, banner
    finally:
        for server in background:
            server.handle.stop()


@pytest.mark.model
def test_audit_try_it_catches_the_4bit_copy(tmp_path):
    """docs/audit.md's "Try it": the `&` simulator is started (and waited for) by the test, the audit
    line runs as printed and reports the substitution."""
    script = example("docs/audit.md", "try_it")
    background, rest = script.split("\n", 1)
    ports = {8765: free_port()}
    env = {"SPECGUARD_HOME": str(tmp_path / "home")}
    simulator = start_printed(printed_commands(background)[0], tmp_path, ports, env)
    try:
        done = run_sh(rest, tmp_path, ports=ports, env=env)
    finally:
        simulator.handle.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("verdict: substituted"), done.stdout
    assert json.loads((tmp_path / "audit-out" / "report.json").read_text())["verdict"] == "substituted"
