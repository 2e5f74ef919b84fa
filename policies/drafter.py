"""The policy's `[drafter]` table, typed: the remote-drafter health knobs and the drafter options.

The table mixes two kinds of keys, both checked here once, when the policy loads:

- the health knobs of remote drafters (`min_acceptance_rate`, `min_steps_before_judging`,
  `cooldown_seconds`, `timeout_seconds`, `max_consecutive_failures`) become a `HealthPolicy`;
- every other key is a drafter option (`max_ngram`, `gguf`, `draft_ahead`, ...; docs/drafters.md),
  passed to the drafter factory, which checks its value when the node starts.

A key that is neither is a ConfigError naming it: a typo must not silently keep a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from specguard.errors import ConfigError

if TYPE_CHECKING:
    from specguard.drafters.health import HealthPolicy

#: the knobs of `specguard.drafters.health.HealthPolicy`, with the type each must have
HEALTH_KEYS: Mapping[str, type] = MappingProxyType({
    "min_acceptance_rate": float,
    "min_steps_before_judging": int,
    "cooldown_seconds": float,
    "timeout_seconds": float,
    "max_consecutive_failures": int,
})

#: options the built-in drafters read (core/drafters/*.py `options.get(...)`, docs/drafters.md)
OPTION_KEYS = frozenset({
    "max_ngram", "min_ngram",  # ngram
    "draft_model", "confidence", "exit_layer",  # draft-model, early-exit
    "url", "drafter_url", "fallback", "drafter_api_key",  # remote
    "gguf", "n_threads", "n_ctx", "max_draft", "share_seed",  # llamacpp
    "draft_ahead", "ahead_wait", "ahead_min_tokens", "ahead_cpus",  # draft-ahead wrapper
})


@dataclass(frozen=True)
class DrafterPolicy:
    """`[drafter]`: `health` governs remote drafters; `options` are handed to the drafter factory."""

    health: HealthPolicy
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def parse_drafter(table: Mapping[str, Any]) -> DrafterPolicy:
    """Parse a `[drafter]` table; unknown keys and ill-typed health knobs are a ConfigError naming the key."""
    from specguard.drafters.health import HealthPolicy

    unknown = sorted(set(table) - set(HEALTH_KEYS) - OPTION_KEYS)
    if unknown:
        raise ConfigError(f"unknown key drafter.{unknown[0]} in the policy's [drafter] table",
                          field=f"drafter.{unknown[0]}", got=unknown,
                          expected=sorted(set(HEALTH_KEYS) | OPTION_KEYS))
    knobs: dict[str, Any] = {}
    for name, kind in HEALTH_KEYS.items():
        if name not in table:
            continue
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise ConfigError("invalid [drafter] policy value", field=f"drafter.{name}", got=value,
                              expected=kind.__name__)
        knobs[name] = kind(value)
    options = {k: v for k, v in table.items() if k in OPTION_KEYS}
    return DrafterPolicy(health=HealthPolicy(**knobs), options=MappingProxyType(options))
