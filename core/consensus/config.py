"""Consensus settings of a serving node: who to ask, how many must accept, which keys count, and
what to do without quorum (command line over the policy's [consensus] table), and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SpecguardError, VerificationError
from ..key_args import parse_key_arg

ON_NO_QUORUM = ("flag", "withhold", "fail")


MAX_BODY_BYTES = 8 * 1024 * 1024


PIN_FILE = Path("consensus") / "pinned_verifier_keys.json"


FAULT_PATH = "/specguard/v1/test/fault"


class NoQuorumError(SpecguardError):
    """Consensus policy "fail": the response got no quorum certificate (HTTP 503)."""

    http_status = 503


class ConsensusWithheldError(VerificationError):
    """Consensus policy "withhold": the response is withheld because it was not certified (HTTP 422)."""

    http_status = 422


# --- configuration ----------------------------------------------------------------------------


def default_quorum(n: int) -> int:
    """2f + 1 for n = 3f + 1 (n - f with f = floor((n - 1) / 3))."""
    return n - (n - 1) // 3 if n > 0 else 0


@dataclass
class ConsensusConfig:
    """Who to ask, how many must accept, which keys count, and what to do without quorum."""

    verifiers: list[str]
    quorum: int
    trusted_keys: list[bytes] = field(default_factory=list)
    trust_on_first_use: bool = False
    timeout: float = 10.0
    on_no_quorum: str = "flag"


def key_value(value: Any, where: str) -> bytes:
    """A verifier key from a policy or command-line value (64 hex digits, a signed-note key or a file)."""
    if not isinstance(value, str):
        raise ConfigError("verifier key must be a string (64 hex digits or a file)", field=where, got=value)
    return parse_key_arg(value)


def consensus_config(node: Any) -> ConsensusConfig | None:
    """The node's consensus settings (command line over policy), or None when no verifiers are set."""
    policy = getattr(node, "policy", None)
    section = policy.section("consensus") if policy is not None else {}
    cons = getattr(node, "consensus", None) or {}
    urls: list[str] = []
    keys: list[bytes] = []
    for i, entry in enumerate(cons.get("verifiers") or section.get("verifiers") or []):
        if isinstance(entry, str):
            urls.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("url"), str):
            urls.append(entry["url"])
            if entry.get("key") is not None:
                keys.append(key_value(entry["key"], f"consensus.verifiers[{i}].key"))
        else:
            raise ConfigError("a verifier must be a URL or a table {url, key}", field=f"consensus.verifiers[{i}]",
                              got=entry)
    if not urls:
        return None
    for i, k in enumerate(list(section.get("verifier_keys") or []) + list(cons.get("verifier_keys") or [])):
        keys.append(k if isinstance(k, bytes) else key_value(k, f"consensus.verifier_keys[{i}]"))
    quorum = cons.get("quorum") or section.get("quorum") or default_quorum(len(urls))
    on_no = section.get("on_no_quorum", "flag")
    if on_no not in ON_NO_QUORUM:
        raise ConfigError("unknown consensus.on_no_quorum", field="consensus.on_no_quorum", got=on_no,
                          expected=ON_NO_QUORUM)
    if not 1 <= int(quorum) <= len(urls):
        raise ConfigError("consensus quorum must be between 1 and the number of verifiers", field="consensus.quorum",
                          got=quorum, expected=f"1..{len(urls)}")
    return ConsensusConfig(verifiers=urls, quorum=int(quorum), trusted_keys=keys,
                           trust_on_first_use=bool(section.get("trust_on_first_use", False)),
                           timeout=float(section.get("timeout_seconds", 10.0)), on_no_quorum=on_no)
