"""Real TEE vectors (../shared/vectors/tee): positives verify at a time inside their validity,
negatives fail with the right typed error; debug vectors fail a no-debug policy."""

from __future__ import annotations

import datetime as dt
import warnings

import pytest
from cryptography import x509
from support.paths import SHARED

from specguard.attest.tee import roots
from specguard.attest.tee import tdx_collateral as tc
from specguard.attest.tee.builtin import NvidiaEvidenceType, SnpEvidenceType, TdxEvidenceType
from specguard.attest.tee.certs import build_chain, load_certificates
from specguard.attest.tee.errors import (
    AttestationPolicyError,
    CertificateChainError,
    CertificateValidityError,
    CollateralExpiredError,
    EndorsementMismatchError,
    EvidenceVerificationError,
    UntrustedRootError,
)
from specguard.attest.tee.nvidia import parse_nvidia
from specguard.attest.tee.nvidia_verify import verify_nvidia
from specguard.attest.tee.snp import parse_snp_report
from specguard.attest.tee.snp_verify import read_endorsement, verify_snp
from specguard.attest.tee.tdx import parse_tdx_quote
from specguard.attest.tee.tdx_verify import read_pck_extensions, verify_tdx

TEE = SHARED / "vectors" / "tee"
SNP, TDX, NV = TEE / "sev-snp", TEE / "tdx", TEE / "nvidia"
UTC = dt.UTC
SNP_AT = dt.datetime(2024, 6, 1, tzinfo=UTC)
NV_AT = dt.datetime(2024, 6, 1, tzinfo=UTC)
TDX_AT = {
    "tdx_prod_quote_SPR_E4.dat": dt.datetime(2024, 6, 1, tzinfo=UTC),
    "cos-113-tdx-quote.dat": dt.datetime(2025, 1, 1, tzinfo=UTC),
    "quote_v5_sample.dat": dt.datetime(2026, 2, 15, tzinfo=UTC),
    "v4_debug_quote.dat": dt.datetime(2023, 7, 1, tzinfo=UTC),
}
NO_DEBUG = {"allow_debug": False}
DEBUG_OK = {"allow_debug": True}


def snp_verified(report: str, vcek: str):
    return verify_snp(parse_snp_report((SNP / report).read_bytes()), at=SNP_AT, certs=(SNP / vcek).read_bytes())


def test_amd_serial_zero_certificates_still_load():
    # cryptography warns about serial 0 today; if a release starts rejecting it, this fails loudly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cert = x509.load_der_x509_certificate((SNP / "milan_v2_vcek.der").read_bytes())
        assert cert.serial_number == 0


@pytest.mark.parametrize("report,vcek,debug", [
    ("milan_v2_report.bin", "milan_v2_vcek.der", False),
    ("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der", True),
])
def test_snp_vectors_verify(report, vcek, debug):
    v = snp_verified(report, vcek)
    assert v.chain[-1].startswith("CN=ARK-Milan")
    assert v.claims["debug"] is debug
    assert v.claims["product"] == "Milan-B0"


def test_snp_milan_reported_tcb_and_report_data():
    v = snp_verified("milan_v2_report.bin", "milan_v2_vcek.der")
    assert v.claims["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    d = snp_verified("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der")
    assert d.claims["report_data"] == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert d.claims["policy"] == 0x0B0000


def test_snp_debug_vector_fails_no_debug_policy_and_passes_debug_policy():
    et = SnpEvidenceType()
    v = snp_verified("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der")
    with pytest.raises(AttestationPolicyError) as err:
        et.validate(v, NO_DEBUG)
    assert [f.field for f in err.value.failures] == ["debug"]
    et.validate(v, DEBUG_OK)
    et.validate(snp_verified("milan_v2_report.bin", "milan_v2_vcek.der"), NO_DEBUG)


def test_snp_with_supplied_chain_file():
    report = parse_snp_report((SNP / "milan_v2_report.bin").read_bytes())
    certs = (SNP / "milan_v2_vcek.der").read_bytes()
    chain = load_certificates((SNP / "milan_cert_chain.pem").read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = load_certificates(certs)[0].public_bytes(Encoding.PEM) + b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    assert verify_snp(report, at=SNP_AT, certs=pem).chain[-1].startswith("CN=ARK-Milan")


def test_snp_invalid_vcek_fails_chain_signature():
    report = parse_snp_report((SNP / "milan_v2_report.bin").read_bytes())
    with pytest.raises(CertificateChainError, match="signature does not verify"):
        verify_snp(report, at=SNP_AT, certs=(SNP / "invalid_vcek_legacy.der").read_bytes())


def test_snp_wrong_vcek_fails_endorsement_or_signature():
    report = parse_snp_report((SNP / "milan_v2_report.bin").read_bytes())
    with pytest.raises(EvidenceVerificationError):
        verify_snp(report, at=SNP_AT, certs=(SNP / "milan_v2_debug_vcek.der").read_bytes())


def test_snp_expired_at_given_time():
    report = parse_snp_report((SNP / "milan_v2_report.bin").read_bytes())
    with pytest.raises(CertificateValidityError, match="expired"):
        verify_snp(report, at=dt.datetime(2031, 1, 1, tzinfo=UTC), certs=(SNP / "milan_v2_vcek.der").read_bytes())
    with pytest.raises(CertificateValidityError, match="not yet valid"):
        verify_snp(report, at=dt.datetime(2020, 1, 1, tzinfo=UTC), certs=(SNP / "milan_v2_vcek.der").read_bytes())


def test_snp_wrong_root_fails():
    report = parse_snp_report((SNP / "milan_v2_report.bin").read_bytes())
    genoa = load_certificates((SNP / "ask_ark_genoa.pem").read_bytes())
    store = roots.custom([genoa[1]], [genoa[0]])
    with pytest.raises(CertificateChainError):
        verify_snp(report, at=SNP_AT, trust=store, certs=(SNP / "milan_v2_vcek.der").read_bytes())
    milan = load_certificates((SNP / "ask_ark_milan.pem").read_bytes())
    # the full Milan chain supplied, but only Genoa pinned: the chain ends at an unpinned root
    with pytest.raises(UntrustedRootError, match="not pinned"):
        verify_snp(report, at=SNP_AT, trust=roots.custom([genoa[1]]),
                   certs=[load_certificates((SNP / "milan_v2_vcek.der").read_bytes())[0], *milan])


@pytest.mark.parametrize("product", ["milan", "genoa", "turin_vcek", "milan_vlek", "genoa_vlek", "turin_vlek"])
def test_pinned_amd_roots_are_self_signed_and_sign_their_ask(product):
    ask, ark = load_certificates((SNP / f"ask_ark_{product}.pem").read_bytes())
    chain = build_chain(ask, [], [ark], dt.datetime(2024, 6, 1, tzinfo=UTC))
    assert chain.root == ark
    assert any(r == ark for r in roots.amd().roots)


def test_turin_vcek_chain_and_extensions():
    vcek = load_certificates((SNP / "turin_vcek.der").read_bytes())[0]
    chain = build_chain(vcek, list(roots.amd().intermediates), roots.amd().roots, dt.datetime(2025, 6, 1, tzinfo=UTC))
    assert chain.root.subject.rfc4514_string().startswith("CN=ARK-Turin")
    e = read_endorsement(vcek)
    assert e.turin and len(e.hwid or b"") == 8 and e.fmc == 0 and e.microcode == 9
    chain_file = load_certificates((SNP / "turin_cert_chain.pem").read_bytes())
    assert build_chain(vcek, chain_file, roots.amd().roots, dt.datetime(2025, 6, 1, tzinfo=UTC)).root == chain.root


@pytest.mark.parametrize("name", sorted(TDX_AT))
def test_tdx_vectors_verify(name):
    v = TdxEvidenceType().verify(parse_tdx_quote((TDX / name).read_bytes()), at=TDX_AT[name])
    assert "CN=Intel SGX Root CA" in v.chain[-1]
    assert v.claims["debug"] is (name == "v4_debug_quote.dat")
    assert v.tcb_status is None


def test_tdx_parse_details():
    spr = parse_tdx_quote((TDX / "tdx_prod_quote_SPR_E4.dat").read_bytes())
    assert spr.trailing == 39 and spr.header.version == 4
    v5 = parse_tdx_quote((TDX / "quote_v5_sample.dat").read_bytes())
    assert v5.header.version == 5 and v5.body_type == 3 and v5.body.mr_servicetd is not None
    cos = parse_tdx_quote((TDX / "cos-113-tdx-quote.dat").read_bytes())
    assert len(cos.raw) == 8000 and cos.trailing == 8000 - 4935


def test_tdx_debug_vector_policy_and_uptodate_with_collateral():
    et = TdxEvidenceType()
    q = parse_tdx_quote((TDX / "v4_debug_quote.dat").read_bytes())
    v = et.verify(q, at=TDX_AT["v4_debug_quote.dat"], collateral=TDX)
    assert v.tcb_status == "UpToDate"
    with pytest.raises(AttestationPolicyError) as err:
        et.validate(v, {**NO_DEBUG, "tdx": {"tcb_statuses": ["UpToDate"]}})
    assert [f.field for f in err.value.failures] == ["debug"]
    et.validate(v, {**DEBUG_OK, "tdx": {"tcb_statuses": ["UpToDate"]}})


def test_tdx_v5_tcb_status_uptodate_against_its_tcb_info():
    q = parse_tdx_quote((TDX / "quote_v5_sample.dat").read_bytes())
    pck = read_pck_extensions(q.pck_chain[0])
    assert pck.fmspc.hex() == "90c06f000000"
    doc = tc.parse_signed_json((TDX / "tcbinfo_fmspc_90c06f000000.json").read_bytes(), "tcbInfo", "tcbinfo")
    signing = load_certificates((TDX / "tcb_signing_chain.pem").read_bytes())[0]
    # the TCB info signature verifies with the TCB signing key, and is current in Feb 2026
    tc.verify_signed_json(doc, signing.public_key(), dt.datetime(2026, 2, 15, tzinfo=UTC), "tcbInfo")
    assert tc.tcb_status(q, pck, doc.body) == ("UpToDate", ())


def test_tdx_v5_full_collateral_fails_on_expired_tcb_signing_cert():
    q = parse_tdx_quote((TDX / "quote_v5_sample.dat").read_bytes())
    with pytest.raises(CertificateValidityError, match="TCB signing certificate is expired"):
        verify_tdx(q, at=TDX_AT["quote_v5_sample.dat"], collateral=TDX)


def test_tdx_spr_matches_no_tcb_level():
    q = parse_tdx_quote((TDX / "tdx_prod_quote_SPR_E4.dat").read_bytes())
    with pytest.raises(EvidenceVerificationError, match="no TCB level"):
        verify_tdx(q, at=dt.datetime(2023, 7, 1, tzinfo=UTC), collateral=TDX)


def test_tdx_collateral_out_of_window():
    q = parse_tdx_quote((TDX / "v4_debug_quote.dat").read_bytes())
    with pytest.raises(CollateralExpiredError, match="tcbInfo is not valid"):
        verify_tdx(q, at=dt.datetime(2024, 1, 1, tzinfo=UTC), collateral=TDX)


def test_tdx_crls_verify_and_pck_not_revoked():
    q = parse_tdx_quote((TDX / "v4_debug_quote.dat").read_bytes())
    coll = tc.load_collateral(TDX)
    assert coll.pck_crl is not None and len(list(coll.pck_crl)) == 44 and len(list(coll.root_crl)) == 0
    v = verify_tdx(q, at=TDX_AT["v4_debug_quote.dat"], collateral=coll)
    assert "QE identity status UpToDate" in v.notes[0]


def test_tdx_wrong_root():
    q = parse_tdx_quote((TDX / "v4_debug_quote.dat").read_bytes())
    with pytest.raises(CertificateChainError):
        verify_tdx(q, at=TDX_AT["v4_debug_quote.dat"], trust=roots.amd())


def nv_evidence():
    return parse_nvidia((NV / "hopperAttestationReport.txt").read_bytes())


def test_nvidia_vector_verifies():
    ev = nv_evidence()
    v = NvidiaEvidenceType().verify(ev, at=NV_AT, certs=(NV / "hopperCertChain.txt").read_bytes())
    assert v.chain[0].startswith("CN=GH100 A01 GSP FMC LF")
    assert v.claims["driver_version"] == "550.90.07"
    assert v.claims["vbios_version"] == "96.00.9F.00.01"
    assert ev.request_nonce.hex().startswith("931d8dd0") and ev.request_nonce.hex().endswith("64dfcb")
    NvidiaEvidenceType().validate(v, {"nvidia": {"driver_versions": ["550.90.07"]}})
    with pytest.raises(AttestationPolicyError, match="nvidia evidence violates"):
        NvidiaEvidenceType().validate(v, {"nvidia": {"vbios_versions": ["96.00.00.00.01"]}})


@pytest.mark.parametrize("case,error,match", [
    ("hopper_cert_chain_case2.txt", CertificateChainError, "at least the signing certificate and the root"),
    ("hopper_cert_chain_case3.txt", CertificateChainError, "incomplete"),
    ("hopper_cert_chain_case4.txt", EndorsementMismatchError, "no FWID extension"),
])
def test_nvidia_broken_chains(case, error, match):
    with pytest.raises(error, match=match):
        verify_nvidia(nv_evidence(), at=NV_AT, certs=(NV / case).read_bytes())


def test_nvidia_wrong_root():
    with pytest.raises(UntrustedRootError):
        verify_nvidia(nv_evidence(), at=NV_AT, trust=roots.intel(), certs=(NV / "hopperCertChain.txt").read_bytes())
