"""Validate verified evidence against the policy's `[attestation]` table (policy, not crypto).

Cryptographic verification lives in `*_verify.py` (it returns a `Verified`); this module only
compares a `Verified` with the typed `AttestationPolicy` (`policy.py`), as go-sev-guest's
`validate/` does after `verify/`. Every rule is evaluated and every violation collected; one
`AttestationPolicyError` lists them all, each naming the field, what was found and what was
expected. Unknown keys are a `ConfigError` (a typo must not silently weaken a policy).

Keys of `[attestation]` (see `policy.py` and docs/attestation.md):
    required, allow_simulated, allow_debug, types, max_evidence_age_seconds, require_key_binding,
    require_reference_values (strict: refuse to validate without reference values),
    reference_values (path of the reference-values file),
    [attestation.snp] / [attestation.tdx] / [attestation.nvidia]: inline reference values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from specguard.errors import ConfigError

from ..binding import GPU_NONCE_SIZE, REPORT_DATA_SIZE, report_data_for
from .certs import utc
from .errors import AttestationPolicyError, PolicyViolation
from .policy import (
    COMMON_KEYS,
    NVIDIA_KEYS,
    REQUIRED_REFERENCE,
    SNP_KEYS,
    TCB_KEYS,
    TDX_KEYS,
    AttestationPolicy,
    check_keys,
    parse_attestation,
)
from .types import Verified

__all__ = ["COMMON_KEYS", "NVIDIA_KEYS", "SNP_KEYS", "TCB_KEYS", "TDX_KEYS", "Collector", "nvidia_rules",
           "section_of", "snp_rules", "tdx_rules", "validate_evidence", "ReportDataBinding"]


def section_of(policy: Any) -> AttestationPolicy:
    """The typed `[attestation]` section of a Policy (its `attestation` accessor), an
    `AttestationPolicy` as given, or a mapping parsed as the table itself."""
    if isinstance(policy, AttestationPolicy):
        return policy
    typed = getattr(policy, "attestation", None)
    if isinstance(typed, AttestationPolicy):
        return typed
    if isinstance(policy, Mapping):
        return parse_attestation(policy)
    raise ConfigError("policy must be a Policy or a mapping", field="policy", got=type(policy).__name__)


def _check_keys(table: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    check_keys(table, allowed, where)


class Collector:
    """Collects PolicyViolations."""

    def __init__(self) -> None:
        self.failures: list[PolicyViolation] = []

    def fail(self, message: str, field: str, got: Any, expected: Any) -> None:
        self.failures.append(PolicyViolation(message, field=field, got=got, expected=expected))

    def allowed(self, field: str, got: bytes, allowed: tuple[bytes, ...] | None) -> None:
        if allowed is not None and got not in allowed:
            self.fail(f"{field} is not an allowed value", field, got, [a.hex() for a in allowed])

    def at_least(self, field: str, got: int | None, minimum: int | None) -> None:
        if minimum is not None and (got is None or got < minimum):
            self.fail(f"{field} is below the policy minimum", field, got, f">= {minimum}")


@dataclass(frozen=True)
class ReportDataBinding:
    """What the evidence's report_data must bind: exactly `expected_report_data` when given, else the
    node's `public_key` with the verifier's `nonce`. GPU evidence (`gpu`) never binds a key alone."""

    public_key: bytes | None = None
    nonce: bytes | None = None
    expected_report_data: bytes | None = None
    gpu: bool = False


def _report_data_rules(verified: Verified, p: AttestationPolicy, c: Collector,
                       binding: ReportDataBinding) -> None:
    gpu, public_key, nonce = binding.gpu, binding.public_key, binding.nonce
    expected_report_data = binding.expected_report_data
    size = GPU_NONCE_SIZE if gpu else REPORT_DATA_SIZE
    got = verified.claims.get("report_data")
    if not isinstance(got, bytes | bytearray) or not got:
        c.fail("evidence has no report_data: it binds nothing", "report_data", None, f"{size} bytes")
        return
    got = bytes(got)
    if len(got) != size:
        c.fail("report_data has the wrong length", "report_data", f"{len(got)} bytes", f"{size} bytes")
        return
    if expected_report_data is not None:
        if got != expected_report_data:
            c.fail("report_data is not the expected value", "report_data", got, expected_report_data)
    elif gpu:
        if p.require_key_binding or (public_key is not None and nonce is not None):
            c.fail("GPU evidence alone does not attest a node key: its requester picks the nonce and the GPU says "
                   "nothing about the software holding the key", "report_data", "GPU evidence only",
                   "CPU TEE evidence (snp/tdx) binding the key, with the GPU nonce derived from it")
    elif public_key is not None and nonce is not None:
        expected = report_data_for(public_key, nonce)
        if got != expected:
            c.fail("REPORT_DATA does not bind the node public key and nonce", "report_data", got, expected)
    elif p.require_key_binding:
        c.fail("key binding required but no public key and nonce were given", "report_data", "not checked",
               "SHA-512(tag, public key, nonce)")


def _reference_rules(verified: Verified, p: AttestationPolicy, c: Collector) -> None:
    if not p.require_reference_values or verified.simulated:
        return
    missing = p.missing_reference(verified.type)
    if missing is None:
        c.fail(f"reference values required, but none are defined for evidence type {verified.type!r}",
               "reference_values", verified.type, sorted(REQUIRED_REFERENCE))
        return
    if len(missing) == len(REQUIRED_REFERENCE[verified.type]) and p.reference_values is None:
        c.fail("reference values required: this policy pins what is running, and no reference values were "
               "given (--reference-values FILE or [attestation] reference_values = \"path\")",
               f"reference_values.{verified.type}", None, list(REQUIRED_REFERENCE[verified.type]))
        return
    for key in missing:
        c.fail(f"reference values required: no value for {verified.type}.{key}",
               f"reference_values.{verified.type}.{key}", "missing",
               p.reference_values.source if p.reference_values else "a value in the reference values")


def validate_evidence(
    verified: Verified,
    policy: Any,
    binding: ReportDataBinding | None = None,
    *,
    now: dt.datetime | None = None,
    collected_at: dt.datetime | None = None,
    type_rules: Callable[[Verified, Any, Collector], None] | None = None,
) -> None:
    """Apply the common rules and `type_rules`; raise AttestationPolicyError with all violations.

    `report_data` must be present and full length (64 bytes; 32 for GPU evidence). It must equal
    `binding.expected_report_data` when given (a GPU nonce derived from CPU evidence, or a value the
    verifier names), else bind `binding.public_key` and `binding.nonce`; GPU evidence can never bind
    a key itself.
    """
    p = section_of(policy)
    c = Collector()
    if verified.simulated:
        from .simulated import warn

        warn("validated")
        if not p.allow_simulated:
            c.fail("SIMULATED evidence is not accepted by this policy", "type", "simulated",
                   "real TEE evidence (or allow_simulated = true, INSECURE)")
    if p.types is not None and verified.type not in p.types and not verified.simulated:
        c.fail("evidence type is not accepted by this policy", "type", verified.type, list(p.types))
    if verified.claims.get("debug") and not p.allow_debug:
        c.fail("debug guest is not allowed", "debug", True, False)
    if p.max_evidence_age_seconds is not None:
        limit = p.max_evidence_age_seconds
        if collected_at is None:
            c.fail("evidence age is unknown (no collection time)", "collected_at", None, f"<= {limit:g}s old")
        else:
            age = (utc(now) - utc(collected_at)).total_seconds()
            if age > limit:
                c.fail("evidence is older than the policy allows", "collected_at",
                       f"{age:.0f}s old ({utc(collected_at).isoformat()})", f"<= {limit:g}s old")
    _report_data_rules(verified, p, c, binding or ReportDataBinding())
    _reference_rules(verified, p, c)
    if p.require_revocation_check and verified.revocation_checked is False and not verified.simulated:
        c.fail("revocation not checked: this policy requires the certificate chain to be checked against "
               "current revocation lists (give them with --collateral: AMD CRLs for SEV-SNP, PCK CRLs for TDX)",
               "collateral", "no CRL", "current CRLs of the chain's issuers")
    if type_rules is not None:
        type_rules(verified, p, c)
    if c.failures:
        listed = " | ".join(f.summary() for f in c.failures)
        raise AttestationPolicyError(
            f"{verified.type} evidence violates the attestation policy ({len(c.failures)} rule(s)): {listed}",
            failures=list(c.failures))


def snp_rules(verified: Verified, section: Any, c: Collector) -> None:
    ref = section_of(section).snp
    claims = verified.claims
    c.allowed("MEASUREMENT", claims["measurement"], ref.measurements)
    c.allowed("HOST_DATA", claims["host_data"], ref.host_data)
    if ref.guest_policies is not None and claims["policy"] not in ref.guest_policies:
        c.fail("guest POLICY is not an allowed value", "POLICY", f"{claims['policy']:#x}",
               [f"{v:#x}" for v in ref.guest_policies])
    if ref.vmpl is not None and claims["vmpl"] != ref.vmpl:
        c.fail("VMPL is not the one the policy requires", "VMPL", claims["vmpl"], ref.vmpl)
    c.at_least("GUEST_SVN", claims["guest_svn"], ref.min_guest_svn)
    for key, minimum in (ref.min_tcb or {}).items():
        c.at_least(f"REPORTED_TCB.{key}", claims["reported_tcb"].get(key), minimum)


def tdx_rules(verified: Verified, section: Any, c: Collector) -> None:
    ref = section_of(section).tdx
    claims = verified.claims
    for key, label in (("mr_td", "MRTD"), ("mr_seam", "MRSEAM"), ("mr_config_id", "MRCONFIGID"),
                       ("rtmr0", "RTMR0"), ("rtmr1", "RTMR1"), ("rtmr2", "RTMR2"), ("rtmr3", "RTMR3")):
        c.allowed(label, claims[key], getattr(ref, key))
    if ref.min_tee_tcb_svn is not None:
        got = claims["tee_tcb_svn"]
        if len(got) != 16 or any(g < m for g, m in zip(got, ref.min_tee_tcb_svn, strict=True)):
            c.fail("TEE_TCB_SVN is below the policy minimum", "TEE_TCB_SVN", got,
                   f">= {ref.min_tee_tcb_svn.hex()} per byte")
    c.at_least("QE ISVSVN", claims["qe_isv_svn"], ref.min_qe_svn)
    if ref.tcb_statuses is not None:
        statuses = list(ref.tcb_statuses)
        if verified.tcb_status is None:
            c.fail("TCB status unknown (no collateral was verified)", "tcb_status", None, statuses)
        elif verified.tcb_status not in statuses:
            c.fail("TCB status is not acceptable", "tcb_status", verified.tcb_status, statuses)


def nvidia_rules(verified: Verified, section: Any, c: Collector) -> None:
    ref = section_of(section).nvidia
    for allowed, claim, label in ((ref.driver_versions, "driver_version", "driver version"),
                                  (ref.vbios_versions, "vbios_version", "VBIOS version")):
        if allowed is not None and verified.claims.get(claim) not in allowed:
            c.fail(f"{label} is not allowed", claim, verified.claims.get(claim), list(allowed))
