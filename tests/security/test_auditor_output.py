"""Issue 22, what auditors read: stdout and --json say what was (and was not) proven.

- `specguard verify` printed `ok evidence:attestation: verified` for SIMULATED evidence (the
  warning went to stderr only); `attest verify` printed `ok: True` first. Now SIMULATED is on that
  layer's own stdout line and in the machine output.
- `log verify` without a pinned key used to pass on the key the log names itself: now it fails
  (exit 10) unless `--allow-unpinned`, like `verify`; the pinned key is `--trusted-key` in both
  (`--key` stays an alias).
- `verify` names the engine, version and model file the receipt signs.
"""

from __future__ import annotations

import json

from support.receipt_factory import Issuer, run_cli, write_json

SIMULATED_SLOT = {"type": "simulated", "evidence_digest": "sha256:" + "ab" * 32, "simulated": True}


def _receipt(tmp_path, evidence=None):
    issuer = Issuer(tmp_path / "home")
    try:
        return issuer, issuer.issue(evidence)
    finally:
        issuer.close()


def test_verify_says_simulated_on_the_attestation_line(tmp_path, capsys):
    issuer, doc = _receipt(tmp_path, {"attestation": SIMULATED_SLOT})
    receipt = write_json(tmp_path / "r.json", doc)
    from specguard.cli import main

    try:
        main(["verify", receipt, "--trusted-key", issuer.key.public_hex])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "evidence:attestation" in x)
    assert "SIMULATED" in line
    code, report, _ = run_cli(["verify", receipt, "--trusted-key", issuer.key.public_hex, "--json"], capsys)
    assert code == 0 and report["simulated"] == ["attestation"]
    layer = next(x for x in report["layers"] if x["layer"] == "evidence:attestation")
    assert layer["simulated"] is True


def test_verify_names_the_engine_and_model_file(tmp_path, capsys):
    issuer, doc = _receipt(tmp_path)
    receipt = write_json(tmp_path / "r.json", doc)
    code, report, _ = run_cli(["verify", receipt, "--key", issuer.key.public_hex, "--json"], capsys)
    assert code == 0
    assert report["engine"] == {"name": "specguard", "version": "", "model_file_digest": ""}
    from specguard.cli import main

    try:
        main(["verify", receipt, "--trusted-key", issuer.key.public_hex])
    except SystemExit as exc:
        assert not exc.code
    assert any(line.strip().startswith("engine  specguard") for line in capsys.readouterr().out.splitlines())


def test_log_verify_needs_a_pinned_key(tmp_path, capsys):
    issuer, _ = _receipt(tmp_path)
    db = tmp_path / "home" / "log" / "log.sqlite3"
    code, out, _ = run_cli(["log", "verify", "--db", db, "--json"], capsys)
    assert code == 10 and out["error"] == "UnpinnedKeyError" and out["field"] == "trusted_keys"
    code, out, _ = run_cli(["log", "verify", "--db", db, "--allow-unpinned", "--json"], capsys)
    assert code == 0 and out["key_pinned"] is False
    for flag in ("--trusted-key", "--key"):
        code, out, _ = run_cli(["log", "verify", "--db", db, flag, issuer.key.public_hex, "--json"], capsys)
        assert code == 0 and out["key_pinned"] is True


def test_attest_verify_says_simulated_first(tmp_path, capsys):
    from specguard.attest.tee.collect import collect_evidence

    doc = collect_evidence(bytes(32), bytes(range(32)), allow_simulated=True)
    assert doc.simulated
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(doc.to_json()), "utf-8")
    from specguard.cli import main

    try:
        main(["attest", "verify", str(path)])
    except SystemExit as exc:
        assert not exc.code
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SIMULATED") and lines.index(next(x for x in lines if x.startswith("ok:"))) > 0
