"""The policy model and its loader."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from specguard.canonical import canonical_json, sha256_hex
from specguard.errors import ConfigError

if TYPE_CHECKING:
    from specguard.attest.request_defaults import ExpectedDefaults
    from specguard.attest.tee.policy import AttestationPolicy
    from specguard.consensus.config import ConsensusPolicy
    from specguard.web.http import TrustedCAs

    from .drafter import DrafterPolicy

log = logging.getLogger("specguard.policy")

PRESET_PACKAGE = "specguard.policies"


@dataclass(frozen=True)
class Policy:
    """A parsed policy. Each table an integrity layer reads is parsed once, at load, into a frozen
    typed object: `attestation`, `consensus`, `drafter`, `request_defaults`, `tls`. Code outside policies/ reads those, never
    the raw tables (tests/architecture/test_policy_access.py).

    `reference_values` (a path) overrides the `[attestation] reference_values` key: the rules and
    their digest stay the same, the reference values are data kept apart from them."""

    name: str
    data: MappingProxyType
    source: str = "<memory>"
    digest: str = field(default="")
    reference_values: str | None = None

    @cached_property
    def attestation(self) -> AttestationPolicy:
        """The `[attestation]` table parsed once into a frozen `AttestationPolicy` (unknown keys and
        ill-typed values are a ConfigError naming the key; reference values loaded and checked)."""
        from specguard.attest.tee.policy import parse_attestation

        base = None if self.source.startswith(("<", "preset:")) else Path(self.source).parent
        return parse_attestation(self.section("attestation"), base_dir=base, reference_values=self.reference_values)

    @cached_property
    def consensus(self) -> ConsensusPolicy:
        """The `[consensus]` table parsed once into a frozen `ConsensusPolicy` (unknown keys and
        ill-typed values are a ConfigError naming the key; absent: all defaults)."""
        from specguard.consensus.config import parse_consensus

        return parse_consensus(self.section("consensus"))

    @cached_property
    def drafter(self) -> DrafterPolicy:
        """The `[drafter]` table parsed once into a frozen `DrafterPolicy` (remote-drafter health
        knobs and drafter options; an unknown key is a ConfigError naming it)."""
        from .drafter import parse_drafter

        return parse_drafter(self.section("drafter"))

    @cached_property
    def request_defaults(self) -> ExpectedDefaults:
        """The `[request_defaults]` pins a verifier holds a node's omitted-field defaults to
        (`max_tokens`, 256 unless pinned; `context_length`, None unless pinned)."""
        from specguard.attest.request_defaults import ExpectedDefaults

        table = self.section("request_defaults")
        unknown = sorted(set(table) - {"max_tokens", "context_length"})
        if unknown:
            raise ConfigError("unknown key in [request_defaults]", field=f"request_defaults.{unknown[0]}",
                              got=unknown[0], expected="max_tokens or context_length")
        return ExpectedDefaults.from_policy_section(table)

    @cached_property
    def tls(self) -> TrustedCAs:
        """The `[tls]` table: CA files trusted for outbound calls (`cacert`, `[tls.cacerts]` per URL
        prefix), relative to the policy file's folder; an unknown key fails at load naming it."""
        from specguard.web.http import TrustedCAs

        base = None if self.source.startswith(("<", "preset:")) else str(Path(self.source).parent)
        return TrustedCAs.from_policy(self.section("tls"), base=base)

    def with_reference_values(self, path: str | Path | None) -> Policy:
        """This policy with its attestation reference values taken from `path` (None: unchanged)."""
        if path is None:
            return self
        policy = replace(self, reference_values=str(Path(path)))
        policy.attestation  # noqa: B018 - parse now: a bad file fails here, not at first use
        return policy

    def section(self, name: str) -> dict[str, Any]:
        """The raw `[name]` table, or {} when absent (layers read the typed properties instead)."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"policy table [{name}] must be a table", field=name, got=type(value).__name__)
        return dict(value)

    @property
    def insecure(self) -> bool:
        """True when any table enables an insecure mode (simulated evidence, no checks)."""
        return bool(self.insecure_reasons())

    def insecure_reasons(self) -> list[str]:
        reasons = []
        att = self.data.get("attestation", {})
        if isinstance(att, dict) and att.get("allow_simulated"):
            reasons.append("attestation.allow_simulated = true accepts SIMULATED TEE evidence")
        if isinstance(att, dict) and att.get("required") is False and self.data.get("insecure_ok"):
            reasons.append("attestation is not required")
        return reasons

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "source": self.source, "policy": _plain(self.data)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict | MappingProxyType):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def preset_names() -> list[str]:
    files = resources.files(PRESET_PACKAGE).joinpath("presets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def policy_from_dict(data: dict[str, Any], name: str | None = None, source: str = "<memory>") -> Policy:
    plain = _plain(data)
    policy_name = name or str(plain.get("name") or "unnamed")
    digest = "sha256:" + sha256_hex(canonical_json(plain))
    policy = Policy(name=policy_name, data=MappingProxyType(plain), source=source, digest=digest)
    _ = (policy.attestation, policy.consensus, policy.drafter, policy.request_defaults, policy.tls)  # parse each table once, at load: bad keys fail here
    for reason in policy.insecure_reasons():
        log.warning("INSECURE policy %r: %s", policy_name, reason)
    return policy


def load_policy(ref: str | Path | None = None) -> Policy:
    """Load a policy by preset name (`dev`, `strict`) or TOML path. None means `dev`."""
    ref = "dev" if ref is None else ref
    path = Path(ref)
    if isinstance(ref, str) and not path.suffix and not path.exists():
        resource = resources.files(PRESET_PACKAGE).joinpath("presets", f"{ref}.toml")
        if not resource.is_file():
            raise ConfigError(f"unknown policy preset {ref!r}", got=ref, expected=preset_names())
        text = resource.read_text("utf-8")
        source = f"preset:{ref}"
    else:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read policy file {str(path)!r}: {exc}") from exc
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy {source} is not valid TOML: {exc}") from exc
    return policy_from_dict(data, source=source)


def evidence_policy(policy: Any, reference_values: str | Path | None = None) -> Any:
    """The policy to verify evidence under: a policy object as given, a preset name or path
    loaded, and `strict` when none is given (offline verification fails closed, unlike `dev`).
    `reference_values` (a file) replaces the policy's attestation reference values; `strict`
    validates nothing without them."""
    if policy is None or isinstance(policy, str | Path):
        policy = load_policy(policy or "strict")
    if reference_values is not None:
        if not isinstance(policy, Policy):
            raise ConfigError("reference values need a Policy", field="policy", got=type(policy).__name__)
        policy = policy.with_reference_values(reference_values)
    return policy
