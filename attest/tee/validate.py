"""Validate verified evidence against the policy's `[attestation]` table.

Every rule is evaluated and every violation collected; one `AttestationPolicyError` lists them
all, each naming the field, what was found and what was expected. Unknown keys are a
`ConfigError` (a typo must not silently weaken a policy).

Keys of `[attestation]`:
    required                  bool  (read by the receipt/verify plumbing, not here)
    allow_simulated           bool  SIMULATED evidence is rejected unless true
    allow_debug               bool  debug guests (SNP POLICY.DEBUG, TDX TD_ATTRIBUTES.DEBUG) rejected unless true
    types                     list  acceptable evidence types, e.g. ["snp", "tdx"]
    max_evidence_age_seconds  int   now - collected_at must not exceed this
    require_key_binding       bool  REPORT_DATA must bind the node key to a nonce (inputs required)
    [attestation.snp]   measurements, host_data (lists of hex), vmpl (int), min_guest_svn (int),
                        min_tcb = {bootloader, tee, snp, microcode, fmc}
    [attestation.tdx]   mr_td, mr_seam, mr_config_id, rtmr0..rtmr3 (lists of hex), min_tee_tcb_svn (hex,
                        16 bytes, per byte), min_qe_svn (int), tcb_statuses (list, e.g. ["UpToDate"])
    [attestation.nvidia] driver_versions, vbios_versions (lists of strings)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from specguard.errors import ConfigError

from ..binding import report_data_for
from .certs import utc
from .errors import AttestationPolicyError, PolicyViolation
from .types import Verified

COMMON_KEYS = {"required", "allow_simulated", "allow_debug", "types", "max_evidence_age_seconds",
               "require_key_binding", "snp", "tdx", "nvidia"}
SNP_KEYS = {"measurements", "host_data", "vmpl", "min_guest_svn", "min_tcb"}
TDX_KEYS = {"mr_td", "mr_seam", "mr_config_id", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "min_tee_tcb_svn",
            "min_qe_svn", "tcb_statuses"}
NVIDIA_KEYS = {"driver_versions", "vbios_versions"}
TCB_KEYS = {"bootloader", "tee", "snp", "microcode", "fmc"}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"unknown keys in policy table [{where}]", field=where, got=unknown,
                          expected=sorted(allowed))


def section_of(policy: Any) -> dict[str, Any]:
    """The `[attestation]` table of a Policy, or a mapping used as the table itself."""
    if hasattr(policy, "section"):
        return dict(policy.section("attestation"))
    if isinstance(policy, Mapping):
        return dict(policy)
    raise ConfigError("policy must be a Policy or a mapping", field="policy", got=type(policy).__name__)


def _hex_list(table: Mapping[str, Any], key: str, where: str) -> list[bytes]:
    value = table[key]
    if isinstance(value, str):
        value = [value]
    try:
        return [bytes.fromhex(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}] {key} must be a list of hex strings", field=f"{where}.{key}") from exc


class Collector:
    """Collects PolicyViolations."""

    def __init__(self) -> None:
        self.failures: list[PolicyViolation] = []

    def fail(self, message: str, field: str, got: Any, expected: Any) -> None:
        self.failures.append(PolicyViolation(message, field=field, got=got, expected=expected))

    def allowed(self, field: str, got: bytes, table: Mapping[str, Any], key: str, where: str) -> None:
        if key in table:
            allowed = _hex_list(table, key, where)
            if got not in allowed:
                self.fail(f"{field} is not an allowed value", field, got, [a.hex() for a in allowed])

    def at_least(self, field: str, got: int | None, minimum: Any) -> None:
        if got is None or got < int(minimum):
            self.fail(f"{field} is below the policy minimum", field, got, f">= {minimum}")


def validate_evidence(
    verified: Verified,
    policy: Any,
    *,
    public_key: bytes | None = None,
    nonce: bytes | None = None,
    now: dt.datetime | None = None,
    collected_at: dt.datetime | None = None,
    type_rules: Callable[[Verified, Mapping[str, Any], Collector], None] | None = None,
) -> None:
    """Apply the common rules and `type_rules`; raise AttestationPolicyError with all violations."""
    section = section_of(policy)
    _check_keys(section, COMMON_KEYS, "attestation")
    c = Collector()
    if verified.simulated:
        from .simulated import warn

        warn("validated")
        if not section.get("allow_simulated", False):
            c.fail("SIMULATED evidence is not accepted by this policy", "type", "simulated",
                   "real TEE evidence (or allow_simulated = true, INSECURE)")
    if "types" in section and verified.type not in section["types"] and not verified.simulated:
        c.fail("evidence type is not accepted by this policy", "type", verified.type, list(section["types"]))
    if verified.claims.get("debug") and not section.get("allow_debug", False):
        c.fail("debug guest is not allowed", "debug", True, False)
    if "max_evidence_age_seconds" in section:
        limit = float(section["max_evidence_age_seconds"])
        if collected_at is None:
            c.fail("evidence age is unknown (no collection time)", "collected_at", None, f"<= {limit:g}s old")
        else:
            age = (utc(now) - utc(collected_at)).total_seconds()
            if age > limit:
                c.fail("evidence is older than the policy allows", "collected_at",
                       f"{age:.0f}s old ({utc(collected_at).isoformat()})", f"<= {limit:g}s old")
    report_data = verified.claims.get("report_data", b"")
    if public_key is not None and nonce is not None:
        expected = report_data_for(public_key, nonce)[: len(report_data)]
        if report_data != expected:
            c.fail("REPORT_DATA does not bind the node public key and nonce", "report_data", report_data, expected)
    elif section.get("require_key_binding", False):
        c.fail("key binding required but no public key and nonce were given", "report_data", "not checked",
               "SHA-512(tag, public key, nonce)")
    if type_rules is not None:
        type_rules(verified, section, c)
    if c.failures:
        listed = " | ".join(f.summary() for f in c.failures)
        raise AttestationPolicyError(
            f"{verified.type} evidence violates the attestation policy ({len(c.failures)} rule(s)): {listed}",
            failures=list(c.failures))


def snp_rules(verified: Verified, section: Mapping[str, Any], c: Collector) -> None:
    table = dict(section.get("snp", {}))
    _check_keys(table, SNP_KEYS, "attestation.snp")
    claims = verified.claims
    c.allowed("MEASUREMENT", claims["measurement"], table, "measurements", "attestation.snp")
    c.allowed("HOST_DATA", claims["host_data"], table, "host_data", "attestation.snp")
    if "vmpl" in table and claims["vmpl"] != int(table["vmpl"]):
        c.fail("VMPL is not the one the policy requires", "VMPL", claims["vmpl"], int(table["vmpl"]))
    if "min_guest_svn" in table:
        c.at_least("GUEST_SVN", claims["guest_svn"], table["min_guest_svn"])
    mins = dict(table.get("min_tcb", {}))
    _check_keys(mins, TCB_KEYS, "attestation.snp.min_tcb")
    for key, minimum in mins.items():
        c.at_least(f"REPORTED_TCB.{key}", claims["reported_tcb"].get(key), minimum)


def tdx_rules(verified: Verified, section: Mapping[str, Any], c: Collector) -> None:
    table = dict(section.get("tdx", {}))
    _check_keys(table, TDX_KEYS, "attestation.tdx")
    claims = verified.claims
    for key, label in (("mr_td", "MRTD"), ("mr_seam", "MRSEAM"), ("mr_config_id", "MRCONFIGID"),
                       ("rtmr0", "RTMR0"), ("rtmr1", "RTMR1"), ("rtmr2", "RTMR2"), ("rtmr3", "RTMR3")):
        c.allowed(label, claims[key], table, key, "attestation.tdx")
    if "min_tee_tcb_svn" in table:
        try:
            minimum = bytes.fromhex(table["min_tee_tcb_svn"])
        except (TypeError, ValueError) as exc:
            raise ConfigError("[attestation.tdx] min_tee_tcb_svn must be hex", field="min_tee_tcb_svn") from exc
        got = claims["tee_tcb_svn"]
        if len(minimum) != 16 or any(g < m for g, m in zip(got, minimum, strict=True)):
            c.fail("TEE_TCB_SVN is below the policy minimum", "TEE_TCB_SVN", got, f">= {minimum.hex()} per byte")
    if "min_qe_svn" in table:
        c.at_least("QE ISVSVN", claims["qe_isv_svn"], table["min_qe_svn"])
    if "tcb_statuses" in table:
        statuses = list(table["tcb_statuses"])
        if verified.tcb_status is None:
            c.fail("TCB status unknown (no collateral was verified)", "tcb_status", None, statuses)
        elif verified.tcb_status not in statuses:
            c.fail("TCB status is not acceptable", "tcb_status", verified.tcb_status, statuses)


def nvidia_rules(verified: Verified, section: Mapping[str, Any], c: Collector) -> None:
    table = dict(section.get("nvidia", {}))
    _check_keys(table, NVIDIA_KEYS, "attestation.nvidia")
    for key, claim, label in (("driver_versions", "driver_version", "driver version"),
                              ("vbios_versions", "vbios_version", "VBIOS version")):
        if key in table and verified.claims.get(claim) not in list(table[key]):
            c.fail(f"{label} is not allowed", claim, verified.claims.get(claim), list(table[key]))
