"""Tolerance profiles: which re-check a vote rests on, and which ones an auditor accepts.

A verifier signs the profile it judged a transcript with in its vote's stats (`stats.profile`):

- `exact`: the reference rule re-run on the verifier's own fp32 torch model (engines specguard,
  transformers); near-ties only within the calibrated fp32 kernel noise (1e-3);
- `same-engine:NAME`: the verifier re-executed engine NAME itself on the very model file the
  receipt names (its SHA-256), teacher-forced, and compared within that engine's own measured
  run-to-run noise (e.g. `same-engine:llamacpp`);
- `cross-engine:NAME`: the verifier judged engine NAME's transcript with its torch model and a
  loose, operator-configured margin ([consensus.engines.NAME]). Such a vote does NOT rule out a
  node that picks a different token wherever another one is within the margin (a quarter of all
  positions for llama.cpp Q4_1 vs fp32 at 0.67 logits): one flipped word can invert an answer.

The tolerance a certificate rests on is the auditor's choice: `verify_certificate` counts an
accepting vote only when its profile is accepted (`DEFAULT_ACCEPTED`: exact and same-engine),
and `--accept-profile cross-engine:NAME` widens that explicitly.

Votes from before profiles (no `stats.profile`) count as `exact` only when their stats show the
exact path (`tolerance_profile` "exact", or no engine or profile at all, which predates other
engines); otherwise `vote_profile` raises `ProfileError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..errors import UsageError, VerificationError

EXACT = "exact"
SAME_ENGINE = "same-engine"
CROSS_ENGINE = "cross-engine"
KINDS = (EXACT, SAME_ENGINE, CROSS_ENGINE)

#: What `specguard verify`, `consensus check` and `consensus verify-certificate` accept by default.
DEFAULT_ACCEPTED: tuple[str, ...] = (EXACT, SAME_ENGINE)

_NAME = re.compile(r"(exact|(same-engine|cross-engine)(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?)")
#: engines whose transcripts are re-checked exactly on the verifier's torch model (as config.EXACT_ENGINES)
_EXACT_ENGINES = ("specguard", "transformers")


class ProfileError(VerificationError):
    """A vote's tolerance profile is unknown, missing, or not one the auditor accepts (exit code 4)."""


def profile_name(kind: str, engine: str) -> str:
    """`exact`, or `KIND:ENGINE` for the same-engine and cross-engine profiles."""
    return EXACT if kind == EXACT else f"{kind}:{engine}"


def parse_accepted(values: Iterable[str], where: str = "--accept-profile") -> tuple[str, ...]:
    """Profiles an auditor accepts, checked: `exact`, `same-engine[:NAME]`, `cross-engine[:NAME]`
    (a kind without `:NAME` means every engine of that kind)."""
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise UsageError("unknown tolerance profile", field=where, got=value,
                             expected="exact | same-engine[:ENGINE] | cross-engine[:ENGINE]")
        out.append(value)
    return tuple(dict.fromkeys(out))


def accepted_set(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The default profiles plus the ones the auditor named."""
    return tuple(dict.fromkeys([*DEFAULT_ACCEPTED, *parse_accepted(extra)]))


def is_accepted(profile: str, accepted: Iterable[str]) -> bool:
    """True when `profile` (e.g. `cross-engine:llamacpp`) is named by `accepted` (exactly or by its kind)."""
    kind = profile.split(":", 1)[0]
    return any(a == profile or a == kind for a in accepted)


def vote_profile(stats: Any) -> str:
    """The profile a vote's signed stats name (see the module docstring for votes without one)."""
    if not isinstance(stats, dict):
        raise ProfileError("vote stats are not an object", field="vote.stats", got=type(stats).__name__)
    profile = stats.get("profile")
    if profile is not None:
        if not isinstance(profile, str) or not _NAME.fullmatch(profile) or profile in (SAME_ENGINE, CROSS_ENGINE):
            raise ProfileError("unknown tolerance profile in the vote", field="vote.stats.profile", got=profile,
                               expected="exact | same-engine:ENGINE | cross-engine:ENGINE")
        return profile
    legacy = stats.get("tolerance_profile")
    engine = stats.get("engine")
    if legacy == EXACT or (legacy is None and (engine is None or engine in _EXACT_ENGINES)):
        return EXACT
    raise ProfileError("vote from before tolerance profiles whose stats do not show the exact re-check "
                       "(it may rest on a cross-engine margin): not counted", field="vote.stats.profile",
                       got={"tolerance_profile": legacy, "engine": engine}, expected="stats.profile")


def describe(stats: Any) -> str:
    """One line about what a vote rests on: profile, margin, deviations (within-margin disagreements) and cap."""
    try:
        profile = vote_profile(stats)
    except ProfileError:
        profile = "unknown"
    if not isinstance(stats, dict):
        return f"profile {profile}"
    deviations = stats.get("deviations", stats.get("near_ties"))
    cap = stats.get("max_deviations", stats.get("max_near_ties"))
    parts = [f"profile {profile}", f"margin {stats.get('margin', '?')}",
             f"deviations {'?' if deviations is None else deviations}"]
    if cap is not None:
        parts.append(f"cap {cap}")
    return ", ".join(parts)


__all__ = ["EXACT", "SAME_ENGINE", "CROSS_ENGINE", "DEFAULT_ACCEPTED", "ProfileError", "profile_name",
           "parse_accepted", "accepted_set", "is_accepted", "vote_profile", "describe"]
