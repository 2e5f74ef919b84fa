"""Flipping any byte of the signed region or of the signature makes verification fail.

SEV-SNP: every byte of 0x000-0x29F and every byte of the 0x200-byte signature area.
TDX: every byte of header, body, quote signature and attestation key; a dense seeded sample of
the QE report, its signature and the QE auth data. NVIDIA: every signature byte and a dense
seeded sample of the signed request || response (each verification walks a 5-certificate chain).
A flip may also be rejected at parse time (e.g. a version byte); it must never verify.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from support.paths import SHARED

from specguard.attest.tee.certs import load_certificates
from specguard.attest.tee.errors import EvidenceParseError, EvidenceVerificationError
from specguard.attest.tee.nvidia import SIGNATURE_SIZE, parse_nvidia
from specguard.attest.tee.nvidia_verify import verify_nvidia
from specguard.attest.tee.snp import SIGNED_SIZE, parse_snp_report
from specguard.attest.tee.snp_verify import verify_snp
from specguard.attest.tee.tdx import parse_tdx_quote
from specguard.attest.tee.tdx_verify import verify_tdx

TEE = SHARED / "vectors" / "tee"
AT = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def flipped(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def assert_all_fail(data: bytes, positions, verify) -> None:
    verify(data)  # the unmodified input verifies
    survivors = []
    for i in positions:
        try:
            verify(flipped(data, i))
        except (EvidenceParseError, EvidenceVerificationError):
            continue
        survivors.append(i)
    assert survivors == [], f"flips at {survivors[:10]} still verify"


@pytest.mark.parametrize("report,vcek", [("milan_v2_report.bin", "milan_v2_vcek.der"),
                                         ("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der")])
def test_snp_every_signed_and_signature_byte(report, vcek):
    data = (TEE / "sev-snp" / report).read_bytes()
    certs = load_certificates((TEE / "sev-snp" / vcek).read_bytes())
    positions = list(range(SIGNED_SIZE)) + list(range(SIGNED_SIZE, len(data)))
    assert_all_fail(data, positions, lambda b: verify_snp(parse_snp_report(b), at=AT, certs=certs))


TDX_AT = {
    "tdx_prod_quote_SPR_E4.dat": AT,
    "cos-113-tdx-quote.dat": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    "quote_v5_sample.dat": dt.datetime(2026, 2, 15, tzinfo=dt.UTC),
    "v4_debug_quote.dat": dt.datetime(2023, 7, 1, tzinfo=dt.UTC),
}


@pytest.mark.parametrize("name", sorted(TDX_AT))
def test_tdx_signed_region_and_signatures(name):
    data = (TEE / "tdx" / name).read_bytes()
    q = parse_tdx_quote(data)
    sig_start = q.signed_size + 4
    dense = list(range(0, sig_start + 128))  # header, body, length, quote signature, attestation key
    qe_start = sig_start + 128 + 6
    qe_end = qe_start + 384 + 64 + 2 + len(q.qe_auth_data)
    rng = random.Random(f"tdx-{name}")
    sample = rng.sample(range(qe_start, qe_end), 160)
    assert_all_fail(data, dense + sample, lambda b: verify_tdx(parse_tdx_quote(b), at=TDX_AT[name]))


def test_nvidia_signature_and_dense_sample():
    raw = bytes.fromhex((TEE / "nvidia" / "hopperAttestationReport.txt").read_text().strip())
    certs = load_certificates((TEE / "nvidia" / "hopperCertChain.txt").read_bytes())
    rng = random.Random("nvidia-bitflip")
    signed = len(raw) - SIGNATURE_SIZE
    positions = list(range(0, 64)) + rng.sample(range(64, signed), 400) + list(range(signed, len(raw)))
    assert_all_fail(raw, positions, lambda b: verify_nvidia(parse_nvidia(b), at=AT, certs=certs))
