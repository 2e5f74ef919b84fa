"""Parse and verify time per TEE evidence format, on the shared real vectors.

Run: .venv/bin/python bench/attest.py   (writes section "attest" of docs/benchmarks.md)
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path

from _report import table, write_section  # noqa: E402

from specguard.attest.tee.certs import load_certificates  # noqa: E402
from specguard.attest.tee.nvidia import parse_nvidia  # noqa: E402
from specguard.attest.tee.nvidia_verify import verify_nvidia  # noqa: E402
from specguard.attest.tee.snp import parse_snp_report  # noqa: E402
from specguard.attest.tee.snp_verify import verify_snp  # noqa: E402
from specguard.attest.tee.tdx import parse_tdx_quote  # noqa: E402
from specguard.attest.tee.tdx_collateral import load_collateral  # noqa: E402
from specguard.attest.tee.tdx_verify import verify_tdx  # noqa: E402

TEE = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "tee"
UTC = dt.UTC


def timed(fn, repeat: int) -> float:
    """Median milliseconds per call over `repeat` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main() -> None:
    snp = (TEE / "sev-snp" / "milan_v2_report.bin").read_bytes()
    vcek = load_certificates((TEE / "sev-snp" / "milan_v2_vcek.der").read_bytes())
    quote = (TEE / "tdx" / "v4_debug_quote.dat").read_bytes()
    coll = load_collateral(TEE / "tdx")
    nv = bytes.fromhex((TEE / "nvidia" / "hopperAttestationReport.txt").read_text().strip())
    nv_chain = load_certificates((TEE / "nvidia" / "hopperCertChain.txt").read_bytes())
    snp_at, tdx_at, nv_at = (dt.datetime(2024, 6, 1, tzinfo=UTC), dt.datetime(2023, 7, 1, tzinfo=UTC),
                             dt.datetime(2024, 6, 1, tzinfo=UTC))
    p_snp, p_tdx, p_nv = parse_snp_report(snp), parse_tdx_quote(quote), parse_nvidia(nv)
    rows = [
        ["SEV-SNP report (Milan v2)", len(snp), timed(lambda: parse_snp_report(snp), 2000),
         timed(lambda: verify_snp(p_snp, at=snp_at, certs=vcek), 200), "VCEK->ASK->ARK (RSA-PSS) + ECDSA P-384"],
        ["TDX quote v4", len(quote), timed(lambda: parse_tdx_quote(quote), 500),
         timed(lambda: verify_tdx(p_tdx, at=tdx_at), 200), "PCK chain + QE report + quote (ECDSA P-256)"],
        ["TDX quote v4 + collateral", len(quote), "-",
         timed(lambda: verify_tdx(p_tdx, at=tdx_at, collateral=coll), 100),
         "+ TCB info, QE identity, 2 CRLs, TCB status"],
        ["NVIDIA SPDM (H100)", len(nv), timed(lambda: parse_nvidia(nv), 500),
         timed(lambda: verify_nvidia(p_nv, at=nv_at, certs=nv_chain), 100), "5-cert chain + ECDSA P-384"],
    ]
    body = (
        "Median per call in one Python process, on the shared real vectors. Verify includes the full certificate chain\n"
        "walk to the pinned root (no caching) and the evidence signature(s); parse is bytes -> typed object.\n\n"
        + table(["evidence", "bytes", "parse (ms)", "verify (ms)", "what verify checks"], rows)
    )
    write_section("attest", "TEE evidence: parse and verify time", "python bench/attest.py", body)
    print(body)


if __name__ == "__main__":
    main()
