"""Error messages print each of `field=` and `got=` once (issue 22): an error that wraps another
must not repeat the inner one's fields, on the commands a new user meets first; every error names the
field, what was found and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.servers import free_port

from specguard.cli import _register_plugin_commands, cli
from specguard.errors import ParseError, SpecguardError, ValidationError, VerificationError


def _output(*args: str) -> tuple[int, str]:
    _register_plugin_commands()
    result = CliRunner().invoke(cli, list(args))
    exc = result.exception
    text = result.output + (exc.summary() if isinstance(exc, SpecguardError) else repr(exc) if exc else "")
    return result.exit_code, text


def _nothing_listening() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("args", [
    pytest.param(lambda tmp: ["log", "verify", "--url", _nothing_listening(), "--allow-unpinned"], id="log-verify"),
    pytest.param(lambda tmp: ["log", "show", "--url", _nothing_listening()], id="log-show"),
    pytest.param(lambda tmp: ["verify", str(tmp / "receipt.json"), "--allow-unpinned"], id="verify-bad-receipt"),
    pytest.param(lambda tmp: ["attest", "verify", str(tmp / "receipt.json"), "--type", "snp"], id="attest-bad-evidence"),
])
def test_each_field_and_got_appears_at_most_once(tmp_path: Path, args):
    (tmp_path / "receipt.json").write_text(json.dumps({"receipt_id": "x", "envelope": {"payload": 1}}), "utf-8")
    code, text = _output(*args(tmp_path))
    assert code != 0, text
    assert "field=" in text, text  # the rule is about errors that name a field
    assert text.count("field=") == 1 and text.count("got=") <= 1, text


def test_audit_run_against_nothing_listening_names_the_url_once(tmp_path: Path):
    code, text = _output("audit", "run", "--base-url", _nothing_listening() + "/v1", "--model", "m",
                         "--reference", "smollm2-135m", "--budget", "1", "--max-tokens", "4", "--out",
                         str(tmp_path / "out"))
    assert code != 0 and "nothing is listening" in text, text
    assert text.count("field=") <= 1 and text.count("got=") <= 1, text


def test_errors_name_field_got_expected():
    e = VerificationError("signature does not verify", field="signature", got="ab", expected="cd")
    assert "field=signature" in str(e) and "got=ab" in str(e) and "expected=cd" in str(e)
    assert e.to_dict()["exit_code"] == 4 and "expected: cd" in e.diagnostics()
    p = ParseError("too short", field="header", offset=0x30)
    assert "0x30" in str(p) and p.exit_code == 3
    v = ValidationError("policy failed", failures=[SpecguardError("a", field="x"), SpecguardError("b", field="y")])
    assert v.exit_code == 5 and "field=x" in v.diagnostics() and len(v.to_dict()["failures"]) == 2
