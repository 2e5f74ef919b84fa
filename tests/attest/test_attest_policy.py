"""Policy paths exercised with a self-made AMD-like CA (generated here): synthetic SEV-SNP
reports signed by a test VCEK whose chain ends at a test ARK passed explicitly as the root.
Each policy rule has a passing and a failing case; all failures are reported together."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from support import tee_fakes

from specguard.attest.binding import report_data_for
from specguard.attest.tee.builtin import SimulatedEvidenceType, SnpEvidenceType, TdxEvidenceType
from specguard.attest.tee.errors import (
    AttestationPolicyError,
    CertificateValidityError,
    EndorsementMismatchError,
    UntrustedRootError,
)
from specguard.attest.tee.simulated import make_simulated_report
from specguard.attest.tee.snp import parse_snp_report
from specguard.attest.tee.snp_verify import verify_snp
from specguard.attest.tee.types import Verified
from specguard.errors import ConfigError

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 1, tzinfo=UTC)
AMD = "1.3.6.1.4.1.3704.1"
MEASUREMENT = bytes(range(48))
CHIP_ID = bytes(range(64, 128))
PUBKEY = bytes(range(32))
NONCE = b"n" * 32


class FakeAmdCA(tee_fakes.FakeAmdCA):
    """The shared fake AMD chain (support.tee_fakes), verifying its own reports."""

    def verify(self, report: bytes, at=NOW) -> Verified:
        return verify_snp(parse_snp_report(report), at=at, trust=self.trust, certs=[self.vcek])


@pytest.fixture(scope="module")
def ca():
    return FakeAmdCA()


def validate(v: Verified, section, **kw):
    SnpEvidenceType().validate(v, section, now=NOW, **kw)


def failures(v: Verified, section, **kw) -> list[str]:
    with pytest.raises(AttestationPolicyError) as err:
        validate(v, section, **kw)
    return [f.field for f in err.value.failures]


def test_synthetic_report_verifies_against_test_root(ca):
    v = ca.verify(ca.report())
    assert v.chain == ("CN=SEV-VCEK", "CN=SEV-Test", "CN=ARK-Test")


def test_wrong_root_fails(ca):
    with pytest.raises(UntrustedRootError, match="not pinned"):
        verify_snp(parse_snp_report(ca.report()), at=NOW, certs=[ca.vcek, ca.ask, ca.ark])  # default: AMD roots


def test_expired_certificate_at_given_time():
    short = FakeAmdCA(vcek_not_after=dt.datetime(2025, 1, 1, tzinfo=UTC))
    report = short.report()
    short.verify(report, at=dt.datetime(2024, 6, 1, tzinfo=UTC))
    with pytest.raises(CertificateValidityError, match="VCEK certificate is expired"):
        short.verify(report, at=NOW)


def test_reported_tcb_must_equal_vcek_tcb(ca):
    with pytest.raises(EndorsementMismatchError, match="REPORTED_TCB"):
        ca.verify(ca.report(tcb=(3, 0, 9, 115)))


def test_chip_id_must_equal_hwid(ca):
    with pytest.raises(EndorsementMismatchError, match="CHIP_ID"):
        ca.verify(ca.report(chip_id=bytes(range(1, 65))))
    assert "masked" in ca.verify(ca.report(chip_id=bytes(64))).notes[0]


@pytest.mark.parametrize("section,kwargs,bad,field", [
    ({"allow_debug": False}, {}, {"debug": True}, "debug"),
    ({"snp": {"measurements": [MEASUREMENT.hex()]}}, {}, {"measurement": bytes(48)}, "MEASUREMENT"),
    ({"snp": {"host_data": ["00" * 32]}}, {}, {"host_data": b"\x01" * 32}, "HOST_DATA"),
    ({"snp": {"vmpl": 0}}, {}, {"vmpl": 2}, "VMPL"),
    ({"snp": {"min_guest_svn": 2}}, {}, {"guest_svn": 1}, "GUEST_SVN"),
    ({"snp": {"min_tcb": {"snp": 8}}}, {}, {"tcb": (3, 0, 7, 115)}, "REPORTED_TCB.snp"),
    ({"snp": {"min_tcb": {"microcode": 100, "bootloader": 3}}}, {}, {"tcb": (3, 0, 8, 99)}, "REPORTED_TCB.microcode"),
    ({"types": ["snp"]}, {}, None, None),
    ({"require_key_binding": True}, {"public_key": PUBKEY, "nonce": NONCE},
     {"report_data": bytes(64)}, "report_data"),
])
def test_each_rule_passes_and_fails(ca, section, kwargs, bad, field):
    good = ca.verify(ca.report(report_data=report_data_for(PUBKEY, NONCE)))
    validate(good, section, **kwargs)
    if bad is None:
        assert failures(good, {"types": ["tdx"]}) == ["type"]
        return
    args = {"report_data": report_data_for(PUBKEY, NONCE), **bad}
    issuer = FakeAmdCA(tcb=bad["tcb"]) if "tcb" in bad else ca  # the VCEK TCB must equal the reported TCB
    assert failures(issuer.verify(issuer.report(**args)), section, **kwargs) == [field]


def test_key_binding_required_without_inputs_fails(ca):
    assert failures(ca.verify(ca.report()), {"require_key_binding": True}) == ["report_data"]


def test_all_failures_reported_together(ca):
    v = ca.verify(ca.report(debug=True, vmpl=1, guest_svn=0))
    section = {"allow_debug": False, "snp": {"vmpl": 0, "min_guest_svn": 1, "measurements": ["00" * 48]}}
    with pytest.raises(AttestationPolicyError) as err:
        validate(v, section)
    fields = [f.field for f in err.value.failures]
    assert fields == ["debug", "MEASUREMENT", "VMPL", "GUEST_SVN"]
    text = err.value.diagnostics()
    assert "got=1" in text and "expected=0" in text and err.value.exit_code == 5


def test_evidence_age(ca):
    v = ca.verify(ca.report())
    section = {"max_evidence_age_seconds": 3600}
    validate(v, section, collected_at=NOW - dt.timedelta(minutes=30))
    with pytest.raises(AttestationPolicyError, match="violates") as err:
        validate(v, section, collected_at=NOW - dt.timedelta(hours=2))
    assert "older than the policy allows" in err.value.failures[0].message
    assert failures(v, section) == ["collected_at"]


def test_unknown_policy_keys_are_config_errors(ca):
    v = ca.verify(ca.report())
    with pytest.raises(ConfigError, match="unknown key 'allow_debgu'") as err:
        validate(v, {"allow_debgu": True})
    assert err.value.field == "attestation.allow_debgu"
    with pytest.raises(ConfigError, match="unknown key 'measurment'") as err:
        validate(v, {"snp": {"measurment": []}})
    assert err.value.field == "attestation.snp.measurment"


def test_tdx_rules_pass_and_fail():
    claims = {"report_data": bytes(64), "debug": False, "mr_td": b"\x01" * 48, "rtmr0": b"\x02" * 48,
              "rtmr1": bytes(48), "rtmr2": bytes(48), "rtmr3": bytes(48), "mr_seam": bytes(48),
              "mr_config_id": bytes(48), "tee_tcb_svn": bytes([3, 0, 5]) + bytes(13), "qe_isv_svn": 4}
    v = Verified("tdx", None, claims, NOW, tcb_status="OutOfDate")
    et = TdxEvidenceType()
    ok = {"tdx": {"mr_td": ["01" * 48], "rtmr0": ["02" * 48], "min_tee_tcb_svn": "030005" + "00" * 13,
                  "min_qe_svn": 4, "tcb_statuses": ["UpToDate", "OutOfDate"]}}
    et.validate(v, ok)
    bad = {"tdx": {"mr_td": ["00" * 48], "rtmr0": ["00" * 48], "rtmr3": ["01" * 48],
                   "min_tee_tcb_svn": "030006" + "00" * 13, "min_qe_svn": 5, "tcb_statuses": ["UpToDate"]}}
    with pytest.raises(AttestationPolicyError) as err:
        et.validate(v, bad)
    assert [f.field for f in err.value.failures] == ["MRTD", "RTMR0", "RTMR3", "TEE_TCB_SVN", "QE ISVSVN",
                                                     "tcb_status"]
    unknown = Verified("tdx", None, claims, NOW, tcb_status=None)
    with pytest.raises(AttestationPolicyError, match="violates"):
        et.validate(unknown, {"tdx": {"tcb_statuses": ["UpToDate"]}})


def test_simulated_rejected_unless_allowed_and_warns(caplog):
    et = SimulatedEvidenceType()
    with caplog.at_level(logging.WARNING, logger="specguard.attest"):
        v = et.verify(et.parse(make_simulated_report(report_data_for(PUBKEY, NONCE))))
        assert v.simulated and v.summary()["simulated"] is True
        with pytest.raises(AttestationPolicyError) as err:
            et.validate(v, {"types": ["snp"]}, public_key=PUBKEY, nonce=NONCE)
        assert [f.field for f in err.value.failures] == ["type"]
        assert "SIMULATED" in err.value.failures[0].message
        et.validate(v, {"allow_simulated": True, "types": ["snp"]}, public_key=PUBKEY, nonce=NONCE)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("SIMULATED" in m for m in messages) >= 4  # parse, verify, and each validate


def test_tcb_byte_layouts_milan_genoa_vs_turin():
    from specguard.attest.tee.snp import decode_tcb

    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert decode_tcb(raw, turin=True).as_dict() == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    raw = int.from_bytes(bytes([3, 0, 0, 0, 0, 0, 8, 115]), "little")
    assert decode_tcb(raw, turin=False).as_dict() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
