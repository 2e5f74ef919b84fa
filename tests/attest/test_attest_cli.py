"""`specguard attest verify|show|collect`: results and distinct exit codes per layer."""

from __future__ import annotations

import json

import pytest
from support.cli import run
from support.paths import SHARED

from specguard.attest.tee import collect

TEE = SHARED / "vectors" / "tee"
SNP = TEE / "sev-snp"




def test_verify_snp_ok_json(capsys):
    code, out, _ = run(capsys, "attest", "verify", str(SNP / "milan_v2_report.bin"), "--type", "snp",
                       "--certs", str(SNP / "milan_v2_vcek.der"), "--at", "2024-06-01T00:00:00Z", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["ok"] is True and result["claims"]["reported_tcb"]["snp"] == 8


def test_verify_exit_codes_parse_verify_validate(capsys, tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes((SNP / "milan_v2_report.bin").read_bytes()[:100])
    code, out, _ = run(capsys, "attest", "verify", str(short), "--type", "snp", "--json")
    assert code == 3 and json.loads(out)["stage"] == "parse"
    code, out, _ = run(capsys, "attest", "verify", str(SNP / "milan_v2_report.bin"), "--type", "snp",
                       "--certs", str(SNP / "invalid_vcek_legacy.der"), "--at", "2024-06-01", "--json")
    assert code == 4 and json.loads(out)["stage"] == "verify"
    policy = tmp_path / "nodebug.toml"
    policy.write_text('name = "nodebug"\n[attestation]\nallow_debug = false\n')
    code, out, _ = run(capsys, "attest", "verify", str(SNP / "milan_v2_debug_report.bin"), "--type", "snp",
                       "--certs", str(SNP / "milan_v2_debug_vcek.der"), "--at", "2024-06-01",
                       "--policy", str(policy), "--json")
    result = json.loads(out)
    assert code == 5 and result["stage"] == "validate"
    assert result["error"]["failures"][0]["field"] == "debug"
    code, _, err = run(capsys, "attest", "verify", str(SNP / "milan_v2_debug_report.bin"), "--type", "snp",
                       "--certs", str(SNP / "milan_v2_debug_vcek.der"), "--at", "2024-06-01", "--policy", str(policy))
    assert code == 5 and "debug" in err


def test_verify_tdx_with_collateral(capsys):
    code, out, _ = run(capsys, "attest", "verify", str(TEE / "tdx" / "v4_debug_quote.dat"), "--type", "tdx",
                       "--collateral", str(TEE / "tdx"), "--at", "2023-07-01T00:00:00Z", "--json")
    assert code == 0 and json.loads(out)["tcb_status"] == "UpToDate"


def test_show_nvidia(capsys):
    code, out, _ = run(capsys, "attest", "show", str(TEE / "nvidia" / "hopperAttestationReport.txt"),
                       "--type", "nvidia")
    assert code == 0
    fields = json.loads(out)["fields"]
    assert fields["opaque_data"]["vbios_version"] == "96.00.9F.00.01"


def test_collect_simulated_then_verify_document(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "TSM_REPORT_DIR", tmp_path / "none")
    monkeypatch.setattr(collect, "SEV_GUEST_DEV", tmp_path / "none-dev")
    out_file = tmp_path / "evidence.json"
    pk = "11" * 32
    code, _, err = run(capsys, "attest", "collect", "--nonce", "ab" * 16, "--public-key", pk, "--out", str(out_file))
    assert code == 0 and "SIMULATED" in err
    code, out, _ = run(capsys, "attest", "verify", str(out_file), "--policy", "dev", "--json")
    assert code == 0 and json.loads(out)["simulated"] is True
    code, out, _ = run(capsys, "attest", "verify", str(out_file), "--policy", "strict", "--json")
    assert code == 5
    code, out, _ = run(capsys, "attest", "show", str(out_file))
    assert code == 0 and "SIMULATED" in json.loads(out)["WARNING"]
    code, _, _ = run(capsys, "attest", "collect", "--nonce", "ab" * 16, "--public-key", pk, "--no-simulated")
    assert code == 1


@pytest.mark.parametrize("args", [["--nonce", "abc"], ["--nonce", "ab" * 8 + "zz"]])
def test_collect_bad_nonce_is_usage_error(capsys, args):
    code, _, _ = run(capsys, "attest", "collect", *args, "--public-key", "11" * 32)
    assert code == 2


def test_evidence_types_come_from_the_hook_and_plugins_can_add_one():
    from specguard.attest.tee import evidence_types as builtin_index
    from specguard.attest.tee.builtin import SimulatedEvidenceType
    from specguard.hookspecs import hookimpl
    from specguard.plugin_manager import load_plugins
    from specguard.plugin_manager import registered_evidence_types as evidence_types

    assert {"snp", "tdx", "nvidia", "simulated"} <= set(evidence_types())
    assert set(builtin_index()) == {"snp", "tdx", "nvidia", "simulated"}  # the pure library's default

    class Custom(SimulatedEvidenceType):
        name = "custom-tee"

    class CustomPlugin:
        @hookimpl
        def register_evidence_types(self, register):
            register(Custom())

    pm = load_plugins()
    plugin = CustomPlugin()
    pm.register(plugin, name="test-custom-tee")
    try:
        assert isinstance(evidence_types()["custom-tee"], Custom)
    finally:
        pm.unregister(plugin)
    assert "custom-tee" not in evidence_types()
