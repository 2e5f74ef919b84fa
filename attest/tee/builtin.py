"""The built-in evidence types (registered through the same hook as third-party ones)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from . import roots
from .nvidia import parse_nvidia, show_nvidia
from .nvidia_verify import verify_nvidia
from .simulated import parse_simulated, show_simulated, verify_simulated
from .snp import parse_snp_report, show_snp
from .snp_verify import load_amd_crls, verify_snp
from .tdx import parse_tdx_quote, show_tdx
from .tdx_verify import verify_tdx
from .types import Verified
from .validate import ReportDataBinding, nvidia_rules, snp_rules, tdx_rules, validate_evidence


class _Base:
    name = ""
    description = ""
    rules: Any = None
    #: GPU evidence: never binds a node key alone (see specguard.attest.binding.gpu_nonce_for)
    gpu = False

    def validate(self, verified: Verified, section: Mapping[str, Any], *, public_key: bytes | None = None,
                 nonce: bytes | None = None, now: dt.datetime | None = None,
                 collected_at: dt.datetime | None = None, expected_report_data: bytes | None = None) -> None:
        binding = ReportDataBinding(public_key, nonce, expected_report_data, gpu=self.gpu)
        validate_evidence(verified, section, binding, now=now, collected_at=collected_at,
                          type_rules=type(self).rules)


class SnpEvidenceType(_Base):
    name = "snp"
    description = "AMD SEV-SNP attestation report (v2/v3/v5), VCEK/VLEK chain to pinned AMD ARKs"
    rules = staticmethod(snp_rules)

    def parse(self, data: bytes) -> Any:
        return parse_snp_report(data)

    def verify(self, parsed: Any, *, at: dt.datetime | None = None, trust: roots.TrustStore | None = None,
               certs: bytes | None = None, collateral: Any = None) -> Verified:
        """`collateral`: AMD CRL(s) (a file, a folder of `*.crl`, bytes or CRL objects), checked when given."""
        return verify_snp(parsed, at=at, trust=trust, certs=certs, crls=load_amd_crls(collateral))

    def show(self, parsed: Any) -> dict[str, Any]:
        return show_snp(parsed)


class TdxEvidenceType(_Base):
    name = "tdx"
    description = "Intel TDX DCAP quote v4/v5, PCK chain to the pinned Intel SGX Root CA, optional collateral"
    rules = staticmethod(tdx_rules)

    def parse(self, data: bytes) -> Any:
        return parse_tdx_quote(data)

    def verify(self, parsed: Any, *, at: dt.datetime | None = None, trust: roots.TrustStore | None = None,
               certs: bytes | None = None, collateral: Any = None) -> Verified:
        return verify_tdx(parsed, at=at, trust=trust, collateral=collateral)

    def show(self, parsed: Any) -> dict[str, Any]:
        return show_tdx(parsed)


class NvidiaEvidenceType(_Base):
    name = "nvidia"
    description = "NVIDIA Hopper SPDM GET_MEASUREMENTS evidence, chain to the pinned NVIDIA device root"
    rules = staticmethod(nvidia_rules)
    gpu = True

    def parse(self, data: bytes) -> Any:
        return parse_nvidia(data)

    def verify(self, parsed: Any, *, at: dt.datetime | None = None, trust: roots.TrustStore | None = None,
               certs: bytes | None = None, collateral: Any = None) -> Verified:
        return verify_nvidia(parsed, at=at, trust=trust, certs=certs)

    def show(self, parsed: Any) -> dict[str, Any]:
        return show_nvidia(parsed)


class SimulatedEvidenceType(_Base):
    name = "simulated"
    description = "SIMULATED evidence for development (INSECURE: proves nothing; policies reject it by default)"

    def parse(self, data: bytes) -> Any:
        return parse_simulated(data)

    def verify(self, parsed: Any, *, at: dt.datetime | None = None, trust: Any = None,
               certs: bytes | None = None, collateral: Any = None) -> Verified:
        return verify_simulated(parsed, at=at)

    def show(self, parsed: Any) -> dict[str, Any]:
        return show_simulated(parsed)


BUILTIN_TYPES = (SnpEvidenceType(), TdxEvidenceType(), NvidiaEvidenceType(), SimulatedEvidenceType())
