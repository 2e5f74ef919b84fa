"""The typed `[attestation]` policy section and the reference values it is checked against.

Rules and reference values are kept apart (the trustee / Veraison convention): the policy's
`[attestation]` table says *which* checks apply (no debug, key binding, TCB status in a list,
"reference values are required"); a reference-values file says *what* must be running (SEV-SNP
measurements, guest policy, VMPL, minimum TCB; TDX MRTD / RTMRs, minimum TEE TCB SVN, allowed TCB
statuses; GPU driver and VBIOS versions). The table is parsed once into a frozen
`AttestationPolicy`; unknown keys and ill-typed values are a `ConfigError` naming the key.

Reference-values file (JSON, or TOML when the name ends in `.toml`):

    {"name": "...", "description": "...", "example": false,
     "snp":    {"measurements": ["<96 hex>"], "guest_policies": ["0x30000"], "vmpl": 0,
                "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
                "host_data": ["<64 hex>"], "min_guest_svn": 0},
     "tdx":    {"mr_td": ["<96 hex>"], "rtmr0": [...], "rtmr1": [...], "rtmr2": [...], "rtmr3": [...],
                "min_tee_tcb_svn": "<32 hex>", "tcb_statuses": ["UpToDate"],
                "mr_seam": [...], "mr_config_id": [...], "min_qe_svn": 4},
     "nvidia": {"driver_versions": ["550.90.07"], "vbios_versions": ["96.00.9F.00.01"]}}

It is named by `[attestation] reference_values = "path"` (relative to the policy file) or given
at verification time (`--reference-values FILE`, `Policy.with_reference_values`). The same
per-type keys may also be written inline in `[attestation.snp]` etc.; a key given in both places
is a `ConfigError` (one source of truth per value).
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from specguard.canonical import sha256_hex
from specguard.errors import ConfigError

log = logging.getLogger("specguard.attest")

COMMON_KEYS = frozenset({"required", "allow_simulated", "allow_debug", "types", "max_evidence_age_seconds",
                         "require_key_binding", "require_reference_values", "require_revocation_check",
                         "reference_values",
                         "snp", "tdx", "nvidia"})
SNP_KEYS = frozenset({"measurements", "host_data", "guest_policies", "vmpl", "min_guest_svn", "min_tcb"})
TDX_KEYS = frozenset({"mr_td", "mr_seam", "mr_config_id", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "min_tee_tcb_svn",
                      "min_qe_svn", "tcb_statuses"})
NVIDIA_KEYS = frozenset({"driver_versions", "vbios_versions"})
TCB_KEYS = frozenset({"bootloader", "tee", "snp", "microcode", "fmc"})
REFERENCE_FILE_KEYS = frozenset({"name", "description", "example", "snp", "tdx", "nvidia"})
TYPE_KEYS = {"snp": SNP_KEYS, "tdx": TDX_KEYS, "nvidia": NVIDIA_KEYS}

#: what `require_reference_values = true` demands per evidence type (strict pins what is running)
REQUIRED_REFERENCE: dict[str, tuple[str, ...]] = {
    "snp": ("measurements", "guest_policies", "vmpl", "min_tcb"),
    "tdx": ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "min_tee_tcb_svn", "tcb_statuses"),
    "nvidia": ("driver_versions", "vbios_versions"),
}
REQUIRED_TCB = ("bootloader", "tee", "snp", "microcode")
TDX_MEASUREMENTS = ("mr_td", "mr_seam", "mr_config_id", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


def check_keys(table: Mapping[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    """ConfigError naming the first unknown key of `table` (a typo must not weaken a policy)."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in policy table [{where}]", field=f"{where}.{unknown[0]}",
                          got=unknown, expected=sorted(allowed))


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"[{where}] {key} must be true or false", field=f"{where}.{key}", got=value,
                          expected="bool")
    return value


def _int(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}", field=where, got=value, expected="int")
    return value


def _hex_list(value: Any, where: str, size: int) -> tuple[bytes, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{where} must be a non-empty list of hex strings", field=where, got=value)
    out = []
    for item in items:
        try:
            raw = bytes.fromhex(item)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} must be a list of hex strings", field=where, got=item) from exc
        if len(raw) != size:
            raise ConfigError(f"{where} values must be {size} bytes", field=where, got=len(raw),
                              expected=f"{size} bytes ({2 * size} hex digits)")
        out.append(raw)
    return tuple(out)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{where} must be a non-empty list of strings", field=where, got=value)
    return tuple(items)


def _policy_value(value: Any, where: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError as exc:
            raise ConfigError(f"{where} values must be integers or hex strings ('0x30000')", field=where,
                              got=value) from exc
    return _int(value, where)


@dataclass(frozen=True)
class SnpReference:
    """SEV-SNP values: allowed MEASUREMENT / HOST_DATA / POLICY values, VMPL, minimum SVN and TCB."""

    measurements: tuple[bytes, ...] | None = None
    host_data: tuple[bytes, ...] | None = None
    guest_policies: tuple[int, ...] | None = None
    vmpl: int | None = None
    min_guest_svn: int | None = None
    min_tcb: Mapping[str, int] | None = None

    @classmethod
    def parse(cls, table: Mapping[str, Any], where: str) -> SnpReference:
        check_keys(table, SNP_KEYS, where)
        kw: dict[str, Any] = {}
        if "measurements" in table:
            kw["measurements"] = _hex_list(table["measurements"], f"{where}.measurements", 48)
        if "host_data" in table:
            kw["host_data"] = _hex_list(table["host_data"], f"{where}.host_data", 32)
        if "guest_policies" in table:
            raw = table["guest_policies"]
            items = raw if isinstance(raw, list | tuple) else [raw]
            if not items:
                raise ConfigError(f"{where}.guest_policies must not be empty", field=f"{where}.guest_policies")
            kw["guest_policies"] = tuple(_policy_value(v, f"{where}.guest_policies") for v in items)
        if "vmpl" in table:
            kw["vmpl"] = _int(table["vmpl"], f"{where}.vmpl")
            if kw["vmpl"] > 3:
                raise ConfigError(f"{where}.vmpl must be 0..3", field=f"{where}.vmpl", got=kw["vmpl"])
        if "min_guest_svn" in table:
            kw["min_guest_svn"] = _int(table["min_guest_svn"], f"{where}.min_guest_svn")
        if "min_tcb" in table:
            mins = table["min_tcb"]
            if not isinstance(mins, Mapping):
                raise ConfigError(f"{where}.min_tcb must be a table", field=f"{where}.min_tcb", got=mins)
            check_keys(mins, TCB_KEYS, f"{where}.min_tcb")
            kw["min_tcb"] = MappingProxyType({k: _int(v, f"{where}.min_tcb.{k}") for k, v in mins.items()})
        return cls(**kw)


@dataclass(frozen=True)
class TdxReference:
    """TDX values: allowed MRTD / MRSEAM / MRCONFIGID / RTMR0..3, minimum TEE_TCB_SVN and QE SVN, TCB statuses."""

    mr_td: tuple[bytes, ...] | None = None
    mr_seam: tuple[bytes, ...] | None = None
    mr_config_id: tuple[bytes, ...] | None = None
    rtmr0: tuple[bytes, ...] | None = None
    rtmr1: tuple[bytes, ...] | None = None
    rtmr2: tuple[bytes, ...] | None = None
    rtmr3: tuple[bytes, ...] | None = None
    min_tee_tcb_svn: bytes | None = None
    min_qe_svn: int | None = None
    tcb_statuses: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, table: Mapping[str, Any], where: str) -> TdxReference:
        check_keys(table, TDX_KEYS, where)
        kw: dict[str, Any] = {}
        for key in TDX_MEASUREMENTS:
            if key in table:
                kw[key] = _hex_list(table[key], f"{where}.{key}", 48)
        if "min_tee_tcb_svn" in table:
            kw["min_tee_tcb_svn"] = _hex_list(table["min_tee_tcb_svn"], f"{where}.min_tee_tcb_svn", 16)[0]
        if "min_qe_svn" in table:
            kw["min_qe_svn"] = _int(table["min_qe_svn"], f"{where}.min_qe_svn")
        if "tcb_statuses" in table:
            kw["tcb_statuses"] = _str_list(table["tcb_statuses"], f"{where}.tcb_statuses")
        return cls(**kw)


@dataclass(frozen=True)
class NvidiaReference:
    """GPU values: allowed driver and VBIOS versions."""

    driver_versions: tuple[str, ...] | None = None
    vbios_versions: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, table: Mapping[str, Any], where: str) -> NvidiaReference:
        check_keys(table, NVIDIA_KEYS, where)
        return cls(**{k: _str_list(table[k], f"{where}.{k}") for k in NVIDIA_KEYS if k in table})


_PARSERS = {"snp": SnpReference, "tdx": TdxReference, "nvidia": NvidiaReference}


@dataclass(frozen=True)
class ReferenceValues:
    """A loaded reference-values file: where it came from, its digest, and the raw per-type tables."""

    source: str
    digest: str
    name: str
    example: bool
    tables: Mapping[str, Mapping[str, Any]]


def load_reference_values(path: str | Path) -> ReferenceValues:
    """Read a reference-values file (JSON, or TOML by suffix); unknown keys are a ConfigError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read reference values {str(path)!r}: {exc}", field="reference_values",
                          got=str(path)) from exc
    try:
        doc = tomllib.loads(data.decode("utf-8")) if path.suffix == ".toml" else json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"reference values {str(path)!r} are not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                          f"{exc}", field="reference_values", got=str(path)) from exc
    if not isinstance(doc, dict):
        raise ConfigError("reference values must be an object", field="reference_values", got=type(doc).__name__)
    check_keys(doc, REFERENCE_FILE_KEYS, "reference_values")
    tables: dict[str, Mapping[str, Any]] = {}
    for kind in TYPE_KEYS:
        if kind in doc:
            if not isinstance(doc[kind], dict):
                raise ConfigError(f"reference_values.{kind} must be an object", field=f"reference_values.{kind}")
            _PARSERS[kind].parse(doc[kind], f"reference_values.{kind}")  # type-check now, fail at load
            tables[kind] = MappingProxyType(dict(doc[kind]))
    example = doc.get("example", False)
    if not isinstance(example, bool):
        raise ConfigError("reference_values.example must be true or false", field="reference_values.example",
                          got=example)
    name = str(doc.get("name") or path.stem)
    if example:
        log.warning("EXAMPLE reference values %r (%s): they match the test vectors, they are NOT production values",
                    name, path)
    return ReferenceValues(str(path), "sha256:" + sha256_hex(data), name, example, MappingProxyType(tables))


@dataclass(frozen=True, eq=False)
class AttestationPolicy(Mapping):
    """The `[attestation]` table, parsed once. Also a read-only Mapping over the table (with the
    reference values merged into the per-type tables), for evidence-type plugins that read keys."""

    required: bool = False
    allow_simulated: bool = False
    allow_debug: bool = False
    require_key_binding: bool = False
    require_reference_values: bool = False
    #: evidence whose certificate chain has revocation lists (SEV-SNP: AMD CRLs; TDX: PCK CRLs) must have
    #: been checked against current ones (`--collateral`); `strict` sets it
    require_revocation_check: bool = False
    types: tuple[str, ...] | None = None
    max_evidence_age_seconds: float | None = None
    snp: SnpReference = field(default_factory=SnpReference)
    tdx: TdxReference = field(default_factory=TdxReference)
    nvidia: NvidiaReference = field(default_factory=NvidiaReference)
    reference_values: ReferenceValues | None = None
    table: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, key: str) -> Any:
        return self.table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def reference(self, kind: str) -> Any:
        """The typed reference values of evidence type `kind` (None for types without any)."""
        return {"snp": self.snp, "tdx": self.tdx, "nvidia": self.nvidia}.get(kind)

    def missing_reference(self, kind: str) -> list[str] | None:
        """Keys `require_reference_values` needs for `kind` that no source gives (None: type unknown)."""
        ref = self.reference(kind)
        if ref is None:
            return None
        missing = [k for k in REQUIRED_REFERENCE[kind] if getattr(ref, k) is None]
        if kind == "snp" and ref.min_tcb is not None:
            missing += [f"min_tcb.{k}" for k in REQUIRED_TCB if k not in ref.min_tcb]
        return missing

    def summary(self) -> dict[str, Any]:
        rv = self.reference_values
        return {"require_reference_values": self.require_reference_values,
                "require_revocation_check": self.require_revocation_check,
                "reference_values": None if rv is None else {"source": rv.source, "digest": rv.digest,
                                                             "name": rv.name, "example": rv.example}}


def parse_attestation(
    table: Mapping[str, Any] | None,
    *,
    base_dir: str | Path | None = None,
    reference_values: str | Path | None = None,
) -> AttestationPolicy:
    """Parse an `[attestation]` table; `reference_values` (a path) overrides the table's key.

    A relative `reference_values` path in the table is resolved against `base_dir` (the policy
    file's folder); one given as an argument against the working directory.
    """
    table = dict(table or {})
    check_keys(table, COMMON_KEYS, "attestation")
    where = "attestation"
    kw: dict[str, Any] = {k: _bool(table, k, where) for k in
                          ("required", "allow_simulated", "allow_debug", "require_key_binding",
                           "require_reference_values", "require_revocation_check")}
    if "types" in table:
        kw["types"] = _str_list(table["types"], "attestation.types")
    if "max_evidence_age_seconds" in table:
        age = table["max_evidence_age_seconds"]
        if isinstance(age, bool) or not isinstance(age, int | float) or age < 0:
            raise ConfigError("attestation.max_evidence_age_seconds must be a number >= 0",
                              field="attestation.max_evidence_age_seconds", got=age)
        kw["max_evidence_age_seconds"] = float(age)
    rv_path: Path | None = None
    if reference_values is not None:
        rv_path = Path(reference_values)
    elif "reference_values" in table:
        if not isinstance(table["reference_values"], str) or not table["reference_values"]:
            raise ConfigError("attestation.reference_values must be a file path", field="attestation.reference_values",
                              got=table["reference_values"])
        rv_path = Path(table["reference_values"])
        if not rv_path.is_absolute() and base_dir is not None:
            rv_path = Path(base_dir) / rv_path
    rv = load_reference_values(rv_path) if rv_path is not None else None
    merged: dict[str, Any] = {k: v for k, v in table.items() if k not in TYPE_KEYS}
    for kind, parser in _PARSERS.items():
        inline = table.get(kind, {})
        if not isinstance(inline, Mapping):
            raise ConfigError(f"[attestation.{kind}] must be a table", field=f"attestation.{kind}",
                              got=type(inline).__name__)
        extra = rv.tables.get(kind, {}) if rv is not None else {}
        both = sorted(set(inline) & set(extra))
        if both:
            raise ConfigError(f"attestation.{kind}.{both[0]} is given both inline and in the reference values",
                              field=f"attestation.{kind}.{both[0]}", got=[f"[attestation.{kind}]", rv.source if rv else None],
                              expected="one source per value")
        combined = {**inline, **extra}
        kw[kind] = parser.parse(combined, f"attestation.{kind}")
        if combined:
            merged[kind] = MappingProxyType(combined)
    return AttestationPolicy(**kw, reference_values=rv, table=MappingProxyType(merged))
