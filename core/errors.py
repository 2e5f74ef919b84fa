"""One error hierarchy for specguard.

Every failure a user can cause or a verifier can detect is a `SpecguardError`. Messages name
the field, what was found and what was expected, and `diagnostics()` renders them for humans.
Each class carries the CLI exit code used when it reaches the command line, so that scripts
can tell which layer failed.
"""

from __future__ import annotations

from typing import Any


class SpecguardError(Exception):
    """Base class of every error specguard raises on purpose."""

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        got: Any = None,
        expected: Any = None,
    ) -> None:
        self.message = message
        self.field = field
        self.got = got
        self.expected = expected
        super().__init__(self.summary())

    def summary(self) -> str:
        parts = [self.message]
        if self.field is not None:
            parts.append(f"field={self.field}")
        if self.got is not None:
            parts.append(f"got={_short(self.got)}")
        if self.expected is not None:
            parts.append(f"expected={_short(self.expected)}")
        return "; ".join(parts)

    def diagnostics(self) -> str:
        """A multi-line explanation for humans."""
        lines = [f"{type(self).__name__}: {self.message}"]
        if self.field is not None:
            lines.append(f"  field:    {self.field}")
        if self.got is not None:
            lines.append(f"  got:      {_short(self.got)}")
        if self.expected is not None:
            lines.append(f"  expected: {_short(self.expected)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "field": self.field,
            "got": _jsonable(self.got),
            "expected": _jsonable(self.expected),
            "exit_code": self.exit_code,
        }


def _short(value: Any, limit: int = 200) -> str:
    text = value.hex() if isinstance(value, bytes | bytearray) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# --- user-facing errors (exit 2) -------------------------------------------------------------


class UsageError(SpecguardError):
    """The user asked for something that cannot be done (bad option, unknown name)."""

    exit_code = 2


class ModelError(UsageError):
    """A model reference could not be resolved or loaded."""


class PluginError(UsageError):
    """A plugin could not be loaded or registered."""


class ConfigError(UsageError):
    """A configuration or policy file is malformed."""


class RequestError(UsageError):
    """A generation request is invalid (bad parameters, prompt too long)."""


# --- evidence errors: parse (3), verify (4), validate (5) ------------------------------------


class ParseError(SpecguardError):
    """Bytes do not have the expected layout. Parsers raise only this on bad input."""

    exit_code = 3

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None, **kw: Any):
        self.offset = offset
        if offset is not None:
            message = f"{message} (at offset {offset:#x})"
        super().__init__(message, field=field, **kw)


class VerificationError(SpecguardError):
    """Cryptographic verification failed: a signature, chain, digest or proof does not hold."""

    exit_code = 4


class ValidationError(SpecguardError):
    """Evidence verified but does not satisfy the policy. Carries every failure at once."""

    exit_code = 5

    def __init__(self, message: str, failures: list[SpecguardError] | None = None, **kw: Any) -> None:
        self.failures = list(failures or [])
        super().__init__(message, **kw)

    def diagnostics(self) -> str:
        lines = [f"{type(self).__name__}: {self.message}"]
        for failure in self.failures:
            lines.append("  - " + failure.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["failures"] = [f.to_dict() for f in self.failures]
        return out


class PolicyError(ValidationError):
    """A policy rule failed."""


# --- outbound calls (specguard.web.http) -----------------------------------------------------------


class OutboundError(SpecguardError):
    """An outbound HTTP exchange failed. `url` is the redacted URL (never user info or secrets)."""

    def __init__(self, message: str, *, url: str | None = None, **kw: Any) -> None:
        self.url = url
        if url is not None:
            message = f"{message} ({url})"
        super().__init__(message, **kw)


class DeadlineExceeded(OutboundError):
    """The whole exchange (connect, headers, body) did not finish before its hard deadline."""


class ResponseTooLarge(OutboundError):
    """The peer's answer exceeded the byte cap."""
