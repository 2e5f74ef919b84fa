"""Substitution audits of OpenAI-compatible providers (`specguard audit`).

Queries a provider, re-checks its answers against a reference copy of the claimed model and
returns a verdict (consistent / substituted / inconclusive) with its evidence. See docs/audit.md.
"""

from ..errors import SpecguardError, UsageError


class AuditError(SpecguardError):
    """An audit could not be carried out (provider unusable, calibration mismatch...)."""


class AuditUsageError(UsageError):
    """Bad audit arguments or files."""


__all__ = ["AuditError", "AuditUsageError"]
