"""Issue 11 §5: `strict` pins what is running, and GPU evidence alone never attests a node key.

Each test plays the attack: real shared vectors (../shared/vectors/tee) that verify
cryptographically but must not pass `strict` without the matching reference values; GPU evidence
offered as node attestation; report_data missing or short; a revoked AMD certificate. Test CAs
(tests/support/tee_fakes.py) stand in where no real vector exists: there is no AMD CRL in the shared
vectors, so the CRLs here are built in the test and signed by a test ARK/ASK."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support.cli import run
from support.paths import ROOT, SHARED
from support.tee_fakes import NOW, FakeAmdCA, FakeNvidia, make_crl, pem

from specguard.attest.binding import gpu_nonce_for, report_data_for
from specguard.attest.tee.builtin import NvidiaEvidenceType, SnpEvidenceType, TdxEvidenceType
from specguard.attest.tee.document import EvidenceDocument, GpuEvidence, load_document, verify_document
from specguard.attest.tee.errors import (
    AttestationPolicyError,
    CollateralError,
    CollateralExpiredError,
    EndorsementMismatchError,
    EvidenceVerificationError,
    KeyBindingError,
    RevokedError,
)
from specguard.attest.tee.nvidia import parse_nvidia
from specguard.attest.tee.nvidia_verify import verify_nvidia
from specguard.attest.tee.snp import parse_snp_report
from specguard.attest.tee.snp_verify import verify_snp
from specguard.attest.tee.tdx import parse_tdx_quote
from specguard.errors import ConfigError
from specguard.policies import load_policy

TEE = SHARED / "vectors" / "tee"
SNP, TDX, NV = TEE / "sev-snp", TEE / "tdx", TEE / "nvidia"
EXAMPLE = ROOT / "policies" / "reference-values" / "example-test-vectors.json"
UTC = dt.UTC
SNP_AT = dt.datetime(2024, 6, 1, tzinfo=UTC)
TDX_AT = dt.datetime(2023, 7, 1, tzinfo=UTC)
PUBKEY = bytes(range(32))
NONCE = b"n" * 32


def strict(reference_values=None):
    return load_policy("strict").with_reference_values(reference_values)


def strict_without_crl(tmp_path, reference_values=None):
    """strict with its revocation switch off: the shared SEV-SNP vectors come with no AMD CRL (issue 20 §6)."""
    path = tmp_path / "strict-no-crl.toml"
    path.write_text((ROOT / "policies" / "presets" / "strict.toml").read_text()
                    .replace("require_revocation_check = true", "require_revocation_check = false"))
    return load_policy(path).with_reference_values(reference_values)


def clean_crl(ca):
    """A current AMD CRL revoking nothing of the chain: revocation checked."""
    return [make_crl(ca.ark, ca.ark_key, [12345])]


def fields(err: pytest.ExceptionInfo) -> list[str]:
    return [f.field for f in err.value.failures]


def milan(report="milan_v2_report.bin", vcek="milan_v2_vcek.der"):
    return SnpEvidenceType().verify(parse_snp_report((SNP / report).read_bytes()), at=SNP_AT,
                                    certs=(SNP / vcek).read_bytes())


def tdx(name, *, collateral=None, at=TDX_AT):
    return TdxEvidenceType().verify(parse_tdx_quote((TDX / name).read_bytes()), at=at, collateral=collateral)


def hopper():
    return NvidiaEvidenceType().verify(parse_nvidia((NV / "hopperAttestationReport.txt").read_bytes()), at=SNP_AT,
                                       certs=(NV / "hopperCertChain.txt").read_bytes())




# --- strict refuses to validate without reference values ------------------------------------------


@pytest.mark.parametrize("make", [milan, lambda: tdx("v4_debug_quote.dat", collateral=TDX)])
def test_strict_without_reference_values_fails_with_reference_values_required(make):
    v = make()
    et = {"snp": SnpEvidenceType(), "tdx": TdxEvidenceType()}[v.type]
    with pytest.raises(AttestationPolicyError, match="reference values required") as err:
        et.validate(v, strict().attestation, expected_report_data=v.claims["report_data"])
    assert f"reference_values.{v.type}" in fields(err)


def test_example_reference_values_make_the_matching_snp_vector_pass(tmp_path):
    v = milan()
    # the example file is labelled as such, and only the verifier's own report_data stands in for a key binding
    assert strict(EXAMPLE).attestation.reference_values.example is True
    with pytest.raises(AttestationPolicyError, match="revocation not checked") as err:  # no AMD CRL for the vector
        SnpEvidenceType().validate(v, strict(EXAMPLE).attestation, now=SNP_AT,
                                   expected_report_data=v.claims["report_data"])
    assert fields(err) == ["collateral"]
    policy = strict_without_crl(tmp_path, EXAMPLE)
    SnpEvidenceType().validate(v, policy.attestation, now=SNP_AT, expected_report_data=v.claims["report_data"])
    # without any binding input strict still fails closed on the key binding, and only on it
    with pytest.raises(AttestationPolicyError) as err:
        SnpEvidenceType().validate(v, policy.attestation, now=SNP_AT)
    assert fields(err) == ["report_data"]


def test_snp_report_with_the_wrong_measurement_fails_under_strict(tmp_path):
    # a real, verifying Milan report from another guest image (and debug, older TCB)
    v = milan("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der")
    with pytest.raises(AttestationPolicyError) as err:
        SnpEvidenceType().validate(v, strict(EXAMPLE).attestation, expected_report_data=v.claims["report_data"])
    assert {"MEASUREMENT", "debug", "POLICY", "REPORTED_TCB.snp"} <= set(fields(err))
    # and, alone, a wrong measurement on an otherwise matching report bound to the node key
    ca = FakeAmdCA()
    rv = tmp_path / "rv.json"
    rv.write_text(json.dumps(ca.reference_values()))
    bound = report_data_for(PUBKEY, NONCE)
    ok = verify_snp(parse_snp_report(ca.report(report_data=bound)), at=NOW, trust=ca.trust, certs=[ca.vcek],
                    crls=clean_crl(ca))
    SnpEvidenceType().validate(ok, strict(rv).attestation, public_key=PUBKEY, nonce=NONCE)
    other = verify_snp(parse_snp_report(ca.report(report_data=bound, measurement=b"\xee" * 48)), at=NOW,
                       trust=ca.trust, certs=[ca.vcek], crls=clean_crl(ca))
    with pytest.raises(AttestationPolicyError) as err:
        SnpEvidenceType().validate(other, strict(rv).attestation, public_key=PUBKEY, nonce=NONCE)
    assert fields(err) == ["MEASUREMENT"]
    failure = err.value.failures[0]
    assert failure.got == b"\xee" * 48 and failure.expected == [bytes(range(48)).hex()]


def test_wrong_vmpl_and_low_tcb_fail_under_strict(tmp_path):
    ca = FakeAmdCA(tcb=(3, 0, 7, 115))
    rv = tmp_path / "rv.json"
    rv.write_text(json.dumps(FakeAmdCA.reference_values(ca)))
    v = verify_snp(parse_snp_report(ca.report(report_data=report_data_for(PUBKEY, NONCE), vmpl=1, tcb=(3, 0, 7, 115))),
                   at=NOW, trust=ca.trust, certs=[ca.vcek], crls=clean_crl(ca))
    with pytest.raises(AttestationPolicyError) as err:
        SnpEvidenceType().validate(v, strict(rv).attestation, public_key=PUBKEY, nonce=NONCE)
    assert fields(err) == ["VMPL", "REPORTED_TCB.snp"]


def test_shared_preproduction_tdx_quote_fails_under_strict():
    spr = "tdx_prod_quote_SPR_E4.dat"
    v = tdx(spr, at=dt.datetime(2024, 6, 1, tzinfo=UTC))  # its crypto verifies
    with pytest.raises(AttestationPolicyError) as err:  # reference values required
        TdxEvidenceType().validate(v, strict().attestation, expected_report_data=v.claims["report_data"])
    assert "reference_values.tdx" in fields(err)
    with pytest.raises(AttestationPolicyError) as err:  # not the pinned TD, and no TCB status without collateral
        TdxEvidenceType().validate(v, strict(EXAMPLE).attestation, expected_report_data=v.claims["report_data"])
    assert {"MRTD", "tcb_status"} <= set(fields(err))
    with pytest.raises(EvidenceVerificationError, match="no TCB level"):  # with collateral: pre-production SVNs
        tdx(spr, collateral=TDX)


def test_tdx_example_vector_meets_every_reference_value_with_its_collateral(tmp_path):
    v = tdx("v4_debug_quote.dat", collateral=TDX)
    assert v.tcb_status == "UpToDate"
    with pytest.raises(AttestationPolicyError) as err:  # strict: it is a debug TD, nothing else is wrong
        TdxEvidenceType().validate(v, strict(EXAMPLE).attestation, expected_report_data=v.claims["report_data"])
    assert fields(err) == ["debug"]
    lenient = tmp_path / "strict-debug.toml"
    lenient.write_text((ROOT / "policies" / "presets" / "strict.toml").read_text()
                       .replace("allow_debug = false", "allow_debug = true"))
    TdxEvidenceType().validate(v, load_policy(lenient).with_reference_values(EXAMPLE).attestation,
                               expected_report_data=v.claims["report_data"])
    no_collateral = tdx("v4_debug_quote.dat")
    with pytest.raises(AttestationPolicyError) as err:
        TdxEvidenceType().validate(no_collateral, load_policy(lenient).with_reference_values(EXAMPLE).attestation,
                                   expected_report_data=v.claims["report_data"])
    assert fields(err) == ["collateral", "tcb_status"]  # without collateral, no PCK CRL either


# --- GPU evidence never attests a node key alone ---------------------------------------------------


def test_hopper_report_alone_fails_under_strict():
    v = hopper()
    for policy in (strict(), strict(EXAMPLE)):
        with pytest.raises(AttestationPolicyError, match="GPU evidence alone does not attest a node key") as err:
            NvidiaEvidenceType().validate(v, policy.attestation, public_key=PUBKEY, nonce=v.claims["report_data"])
        assert "report_data" in fields(err)


def test_nvidia_only_document_is_rejected_as_node_attestation():
    # the requester picks the GPU nonce: anyone can wrap real GPU evidence in a document naming their key
    doc = EvidenceDocument("nvidia", (NV / "hopperAttestationReport.txt").read_bytes(),
                           (NV / "hopperCertChain.txt").read_bytes(), bytes(range(32)), PUBKEY, SNP_AT, False)
    for policy in ("dev", "strict"):
        with pytest.raises(KeyBindingError, match="GPU evidence alone cannot attest a node key") as err:
            verify_document(doc.to_json(), load_policy(policy), at=SNP_AT, now=SNP_AT)
        assert err.value.field == "type" and err.value.exit_code == 4


@pytest.fixture(scope="module")
def cpu_gpu():
    return FakeAmdCA(), FakeNvidia()


def _document(ca, gpu, *, gpu_nonce=None, fwid=True):
    report = ca.report(report_data=report_data_for(PUBKEY, NONCE))
    nonce = gpu_nonce if gpu_nonce is not None else gpu_nonce_for(report, PUBKEY)
    return EvidenceDocument("snp", report, pem(ca.vcek), NONCE, PUBKEY, NOW, False,
                            (GpuEvidence("nvidia", gpu.evidence(nonce, fwid=fwid), gpu.chain),))


def _policy(tmp_path, ca, gpu):
    rv = tmp_path / "rv.json"
    rv.write_text(json.dumps({**ca.reference_values(), "nvidia": gpu.reference_values()}))
    return strict(rv)


def test_gpu_evidence_counts_next_to_cpu_evidence_with_the_derived_nonce(cpu_gpu, tmp_path):
    ca, gpu = cpu_gpu
    doc = _document(ca, gpu)
    trust = {"snp": ca.trust, "nvidia": gpu.trust}
    v = verify_document(load_document(json.dumps(doc.to_json())), _policy(tmp_path, ca, gpu), at=NOW, now=NOW,
                        trust=trust, expected_public_key=PUBKEY, collateral=clean_crl(ca))
    assert [a.type for a in v.attached] == ["nvidia"] and v.summary()["attached"][0]["type"] == "nvidia"
    assert v.attached[0].claims["report_data"] == doc.gpu_nonce()


@pytest.mark.parametrize("nonce", ["requester-chosen", "other-cpu-report", "other-key"])
def test_gpu_evidence_with_a_nonce_not_derived_from_the_cpu_evidence_fails(cpu_gpu, tmp_path, nonce):
    ca, gpu = cpu_gpu
    other_report = ca.report(report_data=report_data_for(PUBKEY, b"m" * 32))
    chosen = {"requester-chosen": b"\x42" * 32, "other-cpu-report": gpu_nonce_for(other_report, PUBKEY),
              "other-key": gpu_nonce_for(ca.report(report_data=report_data_for(PUBKEY, NONCE)), bytes(32))}[nonce]
    doc = _document(ca, gpu, gpu_nonce=chosen)
    with pytest.raises(KeyBindingError, match="not derived from the CPU evidence") as err:
        verify_document(doc, _policy(tmp_path, ca, gpu), at=NOW, now=NOW, trust={"snp": ca.trust, "nvidia": gpu.trust})
    assert err.value.field == "gpus[0].nonce"


def test_attached_gpu_evidence_is_held_to_the_reference_values(cpu_gpu, tmp_path):
    ca, gpu = cpu_gpu
    report = ca.report(report_data=report_data_for(PUBKEY, NONCE))
    doc = EvidenceDocument("snp", report, pem(ca.vcek), NONCE, PUBKEY, NOW, False,
                           (GpuEvidence("nvidia", gpu.evidence(gpu_nonce_for(report, PUBKEY), driver="535.0.0"),
                                        gpu.chain),))
    with pytest.raises(AttestationPolicyError) as err:
        verify_document(doc, _policy(tmp_path, ca, gpu), at=NOW, now=NOW, trust={"snp": ca.trust, "nvidia": gpu.trust},
                        collateral=clean_crl(ca))
    assert fields(err) == ["driver_version"]


def test_gpu_evidence_without_fwid_fails(cpu_gpu):
    _, gpu = cpu_gpu
    ev = parse_nvidia(gpu.evidence(b"\x01" * 32, fwid=False))
    with pytest.raises(EndorsementMismatchError, match="no FWID") as err:
        verify_nvidia(ev, at=NOW, trust=gpu.trust, certs=gpu.chain)
    assert err.value.field == "opaque.fwid"


# --- report_data missing or short ------------------------------------------------------------------


@pytest.mark.parametrize("report_data", [None, b"", b"\x01" * 32, b"\x01" * 63])
def test_missing_or_short_report_data_fails(report_data):
    v = milan()
    claims = {k: val for k, val in v.claims.items() if k != "report_data"}
    if report_data is not None:
        claims["report_data"] = report_data
    forged = dataclasses.replace(v, claims=claims)
    # before: a prefix compare made an empty report_data "bind" any key and nonce
    for section in ({"allow_debug": True}, strict(EXAMPLE).attestation):
        with pytest.raises(AttestationPolicyError) as err:
            SnpEvidenceType().validate(forged, section, public_key=PUBKEY, nonce=NONCE)
        assert "report_data" in fields(err)
        message = next(f.message for f in err.value.failures if f.field == "report_data")
        assert "no report_data" in message or "wrong length" in message


# --- AMD CRLs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amd():
    return FakeAmdCA()


def _snp(amd, crls):
    return verify_snp(parse_snp_report(amd.report()), at=NOW, trust=amd.trust, certs=[amd.vcek], crls=crls)


def test_amd_crl_revoking_the_ask_fails(amd):
    with pytest.raises(RevokedError, match="revoked") as err:
        _snp(amd, [make_crl(amd.ark, amd.ark_key, [amd.ask.serial_number])])
    assert "SEV-Test" in err.value.field


def test_amd_crl_revoking_the_vcek_fails_also_through_a_document(amd, tmp_path):
    crl = make_crl(amd.ask, amd.ask_key, [amd.vcek.serial_number])
    with pytest.raises(RevokedError):
        _snp(amd, [crl])
    path = tmp_path / "amd.crl"
    path.write_bytes(crl.public_bytes(Encoding.DER))
    report = amd.report(report_data=report_data_for(PUBKEY, NONCE))
    doc = EvidenceDocument("snp", report, pem(amd.vcek), NONCE, PUBKEY, NOW, False)
    policy = load_policy("dev")
    verify_document(doc, policy, at=NOW, now=NOW, trust=amd.trust)  # no CRL given: not checked
    for collateral in (path, tmp_path):  # a CRL file, or a folder of *.crl
        with pytest.raises(RevokedError):
            verify_document(doc, policy, at=NOW, now=NOW, trust=amd.trust, collateral=collateral)


def test_amd_crl_clean_passes_and_bad_crls_fail(amd):
    v = _snp(amd, [make_crl(amd.ark, amd.ark_key, [12345])])
    assert any("AMD CRL" in n for n in v.notes)
    stranger = FakeNvidia()
    with pytest.raises(CollateralError, match="not issued by any certificate"):
        _snp(amd, [make_crl(stranger.root, stranger.root_key)])
    forged = make_crl(amd.ark, FakeAmdCA().ark_key)  # right issuer name, another key
    with pytest.raises(EvidenceVerificationError, match="signature does not verify"):
        _snp(amd, [forged])
    stale = make_crl(amd.ark, amd.ark_key, last=dt.datetime(2024, 1, 1, tzinfo=UTC),
                     next_update=dt.datetime(2024, 2, 1, tzinfo=UTC))
    with pytest.raises(CollateralExpiredError):
        _snp(amd, [stale])
    with pytest.raises(CollateralError, match="holds no CRL"):
        _snp(amd, [])


# --- typed [attestation] section -------------------------------------------------------------------


def test_attestation_section_is_typed_frozen_and_rejects_unknown_keys(tmp_path):
    policy = strict(EXAMPLE)
    att = policy.attestation
    assert att is policy.attestation  # parsed once
    assert att.require_reference_values and att.snp.vmpl == 0 and att.tdx.tcb_statuses == ("UpToDate",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        att.allow_debug = True
    assert policy.section("consensus")["on_no_quorum"] == "fail"  # other sections read as before
    bad = tmp_path / "typo.toml"
    bad.write_text('name = "t"\n[attestation]\nrequire_referance_values = true\n')
    with pytest.raises(ConfigError, match="require_referance_values") as err:
        load_policy(bad)
    assert err.value.field == "attestation.require_referance_values"
    rv = tmp_path / "rv.json"
    rv.write_text(json.dumps({"snp": {"measurement": ["00" * 48]}}))
    with pytest.raises(ConfigError, match="'measurement'"):
        strict(rv)
    rv.write_text(json.dumps({"snp": {"vmpl": "0"}}))
    with pytest.raises(ConfigError, match="vmpl"):
        strict(rv)
    both = tmp_path / "both.toml"
    both.write_text(f'name = "t"\n[attestation]\nreference_values = "{EXAMPLE}"\n[attestation.snp]\nvmpl = 1\n')
    with pytest.raises(ConfigError, match="both inline and in the reference values"):
        load_policy(both)


def test_policy_file_names_its_reference_values_relative_to_itself(tmp_path):
    (tmp_path / "rv").mkdir()
    (tmp_path / "rv" / "values.json").write_text(EXAMPLE.read_text())
    policy_file = tmp_path / "mine.toml"
    policy_file.write_text((ROOT / "policies" / "presets" / "strict.toml").read_text()
                           .replace("require_reference_values = true",
                                    'require_reference_values = true\nreference_values = "rv/values.json"')
                           .replace("require_revocation_check = true", "require_revocation_check = false"))
    v = milan()
    SnpEvidenceType().validate(v, load_policy(policy_file).attestation, expected_report_data=v.claims["report_data"])


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_attest_verify_with_reference_values(capsys, tmp_path):
    base = ["attest", "verify", str(SNP / "milan_v2_report.bin"), "--type", "snp", "--certs",
            str(SNP / "milan_v2_vcek.der"), "--at", "2024-06-01T00:00:00Z", "--json"]
    rd = milan().claims["report_data"].hex()
    code, out, _ = run(capsys, *base, "--policy", "strict", "--report-data", rd)
    assert code == 5 and "reference values required" in out
    code, out, _ = run(capsys, *base, "--policy", "strict", "--reference-values", str(EXAMPLE), "--report-data", rd)
    assert code == 5 and "revocation not checked" in out  # the shared vector comes with no AMD CRL
    lenient = strict_without_crl(tmp_path)
    code, out, _ = run(capsys, *base, "--policy", lenient.source, "--reference-values", str(EXAMPLE),
                       "--report-data", rd)
    result = json.loads(out)
    assert code == 0 and result["validated"] and result["reference_values"]["example"] is True
    code, out, _ = run(capsys, *base, "--reference-values", str(EXAMPLE))  # implies strict: binding still required
    assert code == 5 and json.loads(out)["error"]["failures"][0]["field"] == "report_data"
    code, out, _ = run(capsys, "attest", "verify", str(SNP / "milan_v2_debug_report.bin"), "--type", "snp",
                       "--certs", str(SNP / "milan_v2_debug_vcek.der"), "--at", "2024-06-01T00:00:00Z", "--json",
                       "--reference-values", str(EXAMPLE), "--report-data", "0102030405" + "00" * 59)
    assert code == 5 and "MEASUREMENT" in [f["field"] for f in json.loads(out)["error"]["failures"]]


def test_cli_hopper_alone_and_nvidia_only_document_fail(capsys, tmp_path):
    code, out, _ = run(capsys, "attest", "verify", str(NV / "hopperAttestationReport.txt"), "--type", "nvidia",
                       "--certs", str(NV / "hopperCertChain.txt"), "--at", "2024-06-01T00:00:00Z",
                       "--reference-values", str(EXAMPLE), "--json")
    assert code == 5 and "GPU evidence alone" in out
    doc = EvidenceDocument("nvidia", (NV / "hopperAttestationReport.txt").read_bytes(),
                           (NV / "hopperCertChain.txt").read_bytes(), bytes(range(32)), PUBKEY, SNP_AT, False)
    path = tmp_path / "gpu-only.json"
    path.write_text(json.dumps(doc.to_json()))
    code, out, _ = run(capsys, "attest", "verify", str(path), "--at", "2024-06-01T00:00:00Z", "--json")
    assert code == 4 and json.loads(out)["error"]["error"] == "KeyBindingError"


def test_cli_gpu_nonce_and_attach_gpu(capsys, tmp_path, cpu_gpu):
    ca, gpu = cpu_gpu
    report = ca.report(report_data=report_data_for(PUBKEY, NONCE))
    doc = EvidenceDocument("snp", report, pem(ca.vcek), NONCE, PUBKEY, NOW, False)
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc.to_json()))
    code, out, _ = run(capsys, "attest", "gpu-nonce", str(path))
    assert code == 0 and bytes.fromhex(out.strip()) == gpu_nonce_for(report, PUBKEY)
    (tmp_path / "gpu.bin").write_bytes(gpu.evidence(bytes.fromhex(out.strip())))
    (tmp_path / "gpu.pem").write_bytes(gpu.chain)
    combined = tmp_path / "combined.json"
    code, _, _ = run(capsys, "attest", "attach-gpu", str(path), "--gpu-evidence", str(tmp_path / "gpu.bin"),
                     "--gpu-certs", str(tmp_path / "gpu.pem"), "--out", str(combined))
    assert code == 0 and len(load_document(combined).gpus) == 1
    (tmp_path / "wrong.bin").write_bytes(gpu.evidence(b"\x42" * 32))
    code, _, _ = run(capsys, "attest", "attach-gpu", str(path), "--gpu-evidence", str(tmp_path / "wrong.bin"),
                     "--gpu-certs", str(tmp_path / "gpu.pem"), "--out", str(tmp_path / "x.json"))
    assert code == 4


def test_evidence_policy_helper_takes_reference_values():
    from specguard.policies import evidence_policy

    assert evidence_policy(None).attestation.reference_values is None
    policy = evidence_policy("strict", reference_values=EXAMPLE)
    assert policy.name == "strict" and policy.attestation.reference_values.name == "example-test-vectors"
    assert policy.digest == load_policy("strict").digest  # the rules are unchanged; the values are data
