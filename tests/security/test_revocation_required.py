"""Issue 20 §6: `strict` passed SEV-SNP evidence with no revocation list and said nothing. Now strict
requires the chain to be checked against current CRLs (`require_revocation_check`, a named policy
switch), and every verification result says "revocation not checked" where it was not.

Test CAs (tests/support/tee_fakes.py) stand in for AMD's: there is no AMD CRL in the shared vectors."""

from __future__ import annotations

import json

import pytest
from support.tee_fakes import NOW, FakeAmdCA, make_crl

from specguard.attest.binding import report_data_for
from specguard.attest.tee.builtin import SnpEvidenceType
from specguard.attest.tee.errors import AttestationPolicyError
from specguard.attest.tee.snp import parse_snp_report
from specguard.attest.tee.snp_verify import verify_snp
from specguard.policies import load_policy
from specguard.policies.model import policy_from_dict

PUBKEY = bytes(range(32))
NONCE = b"n" * 32


@pytest.fixture(scope="module")
def ca():
    return FakeAmdCA()


def _verified(ca, crls=None):
    report = ca.report(report_data=report_data_for(PUBKEY, NONCE))
    return verify_snp(parse_snp_report(report), at=NOW, trust=ca.trust, certs=[ca.vcek], crls=crls)


def _strict(ca, tmp_path, **attestation):
    rv = tmp_path / "rv.json"
    rv.write_text(json.dumps(ca.reference_values()))
    if not attestation:
        return load_policy("strict").with_reference_values(rv)
    data = json.loads(json.dumps(load_policy("strict").to_json()["policy"]))
    data["attestation"].update(attestation)
    return policy_from_dict(data, name="strict-no-crl").with_reference_values(rv)


def test_strict_refuses_snp_evidence_whose_revocation_was_not_checked(ca, tmp_path):
    unchecked = _verified(ca)
    assert unchecked.revocation_checked is False
    assert unchecked.summary()["revocation"] == "revocation not checked"
    assert any(n.startswith("revocation not checked") for n in unchecked.notes)
    with pytest.raises(AttestationPolicyError, match="revocation not checked") as err:
        SnpEvidenceType().validate(unchecked, _strict(ca, tmp_path).attestation, public_key=PUBKEY, nonce=NONCE)
    assert [f.field for f in err.value.failures] == ["collateral"]


def test_a_current_crl_satisfies_strict(ca, tmp_path):
    checked = _verified(ca, [make_crl(ca.ark, ca.ark_key, [12345])])
    assert checked.revocation_checked is True and checked.summary()["revocation"] == "checked"
    SnpEvidenceType().validate(checked, _strict(ca, tmp_path).attestation, public_key=PUBKEY, nonce=NONCE)


def test_the_switch_is_named_and_dev_does_not_require_it(ca, tmp_path):
    assert load_policy("strict").attestation.require_revocation_check is True
    assert load_policy("dev").attestation.require_revocation_check is False
    lenient = _strict(ca, tmp_path, require_revocation_check=False)
    assert lenient.attestation.summary()["require_revocation_check"] is False
    SnpEvidenceType().validate(_verified(ca), lenient.attestation, public_key=PUBKEY, nonce=NONCE)
