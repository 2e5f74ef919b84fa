"""Health of remote drafters: acceptance tracking and cool-downs, per drafter URL.

A remote drafter is untrusted, so it can never change an output; what it *can* do is waste the
verifier's time (slow answers, garbage, proposals that are never accepted). This module keeps,
per drafter URL and shared by every request of one process, how many tokens it proposed and
how many the target accepted. A drafter is cut off for `cooldown_seconds` when

- after `min_steps_before_judging` steps its acceptance rate (accepted / proposed tokens,
  counting a proposal the engine rejected as proposed-and-not-accepted) is below
  `min_acceptance_rate`, or
- `max_consecutive_failures` calls in a row failed (refused, timed out, malformed answer).

While cut off, `RemoteDrafter` drafts with its local fallback and does not contact the URL.
After the cool-down the URL gets a fresh judging window. The knobs come from the policy's
`[drafter]` table (see docs/drafters.md); `drafter_health()` reports the state for /metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError

log = logging.getLogger("specguard.drafters.remote")


@dataclass(frozen=True)
class HealthPolicy:
    """The `[drafter]` policy knobs that govern remote drafters."""

    min_acceptance_rate: float = 0.05
    min_steps_before_judging: int = 32
    cooldown_seconds: float = 60.0
    timeout_seconds: float = 2.0
    max_consecutive_failures: int = 3

    def __post_init__(self) -> None:
        checks = (
            ("min_acceptance_rate", 0.0 <= self.min_acceptance_rate <= 1.0, "a number in [0, 1]"),
            ("min_steps_before_judging", self.min_steps_before_judging >= 1, "an integer >= 1"),
            ("cooldown_seconds", self.cooldown_seconds >= 0, "a number >= 0"),
            ("timeout_seconds", 0 < self.timeout_seconds <= 600, "a number in (0, 600]"),
            ("max_consecutive_failures", self.max_consecutive_failures >= 1, "an integer >= 1"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError("invalid [drafter] policy value", field=f"drafter.{name}", got=getattr(self, name), expected=expected)

    @classmethod
    def from_policy(cls, policy: Any) -> HealthPolicy:
        """The `[drafter]` knobs of a Policy (`Policy.drafter.health`, checked at load); None -> defaults."""
        return cls() if policy is None else policy.drafter.health


def display_url(url: str) -> str:
    """The URL without user info (credentials never appear in metrics or logs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


@dataclass
class _Record:
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    window_steps: int = 0
    window_drafted: int = 0
    window_accepted: int = 0
    consecutive_failures: int = 0
    failures: int = 0
    cutoffs: int = 0
    cut_off_until: float = 0.0
    last_error: str | None = None
    last_cutoff_reason: str | None = None


class DrafterHealthRegistry:
    """Thread-safe per-URL health records. `clock` is monotonic seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def _get(self, url: str) -> _Record:
        record = self._records.get(url)
        if record is None:
            record = self._records[url] = _Record()
        return record

    def available(self, url: str) -> bool:
        """False while `url` is cut off; the first call after a cool-down opens a fresh window."""
        with self._lock:
            record = self._get(url)
            if record.cut_off_until and self._clock() < record.cut_off_until:
                return False
            if record.cut_off_until:
                record.cut_off_until = 0.0
                record.window_steps = record.window_drafted = record.window_accepted = 0
                record.consecutive_failures = 0
            return True

    def record_step(self, url: str, drafted: int, accepted: int, policy: HealthPolicy) -> None:
        """One verification step that used the remote's proposal (rejected proposals: accepted=0)."""
        drafted, accepted = max(0, int(drafted)), max(0, int(accepted))
        accepted = min(accepted, drafted)
        with self._lock:
            r = self._get(url)
            r.steps += 1
            r.drafted += drafted
            r.accepted += accepted
            r.window_steps += 1
            r.window_drafted += drafted
            r.window_accepted += accepted
            if r.window_steps >= policy.min_steps_before_judging:
                rate = r.window_accepted / r.window_drafted if r.window_drafted else 0.0
                if rate < policy.min_acceptance_rate:
                    self._cut_off(
                        r,
                        policy,
                        f"acceptance rate {rate:.3f} over {r.window_steps} steps is below "
                        f"min_acceptance_rate {policy.min_acceptance_rate}",
                    )
                else:
                    r.window_steps = r.window_drafted = r.window_accepted = 0

    def record_success(self, url: str) -> None:
        """A call that returned a well-formed answer (its tokens are judged by the engine)."""
        with self._lock:
            self._get(url).consecutive_failures = 0

    def record_failure(self, url: str, error: str, policy: HealthPolicy) -> None:
        """A call that failed: refused, timed out, HTTP error, or an answer that is not the protocol's."""
        with self._lock:
            r = self._get(url)
            r.failures += 1
            r.consecutive_failures += 1
            r.last_error = error[:300]
            if r.consecutive_failures >= policy.max_consecutive_failures:
                self._cut_off(r, policy, f"{r.consecutive_failures} consecutive failures (last: {r.last_error})")

    def _cut_off(self, r: _Record, policy: HealthPolicy, reason: str) -> None:
        r.cut_off_until = self._clock() + policy.cooldown_seconds
        r.cutoffs += 1
        r.last_cutoff_reason = reason
        r.window_steps = r.window_drafted = r.window_accepted = 0
        r.consecutive_failures = 0
        log.warning(
            "remote drafter cut off for %.0f s: %s", policy.cooldown_seconds, reason
        )

    def snapshot(self) -> dict[str, Any]:
        """{display url: state} with counters, acceptance rate and remaining cool-down."""
        now = self._clock()
        out: dict[str, Any] = {}
        with self._lock:
            for url, r in self._records.items():
                remaining = max(0.0, r.cut_off_until - now) if r.cut_off_until else 0.0
                out[display_url(url)] = {
                    "state": "cut-off" if remaining > 0 else "ok",
                    "cooldown_remaining_seconds": round(remaining, 3),
                    "steps": r.steps,
                    "drafted": r.drafted,
                    "accepted": r.accepted,
                    "acceptance_rate": round(r.accepted / r.drafted, 6) if r.drafted else None,
                    "failures": r.failures,
                    "consecutive_failures": r.consecutive_failures,
                    "cutoffs": r.cutoffs,
                    "last_error": r.last_error,
                    "last_cutoff_reason": r.last_cutoff_reason,
                }
        return out

    def reset(self) -> None:
        """Forget every record (tests; an operator restarting a node gets the same)."""
        with self._lock:
            self._records.clear()


#: the process-wide registry shared by every RemoteDrafter (all requests of one server)
REGISTRY = DrafterHealthRegistry()


def drafter_health() -> dict[str, Any]:
    """Per remote-drafter URL health, for the server's /metrics or /health."""
    return REGISTRY.snapshot()
