"""Receipt errors: one class per verification layer, each with its CLI exit code."""

from __future__ import annotations

from ...errors import ParseError, VerificationError
from ..dsse import SignatureError


class ReceiptParseError(ParseError):
    """The receipt document, envelope or statement is malformed (exit code 3)."""


class SubjectDigestError(VerificationError):
    """The response does not match the statement's subject digest (exit code 11)."""

    exit_code = 11


class TokenRootError(VerificationError):
    """Token records do not match the signed token-records root or output ids (exit code 12)."""

    exit_code = 12


class EvidenceError(VerificationError):
    """An evidence slot failed verification in a plugin (exit code 14)."""

    exit_code = 14


class MissingEvidenceError(EvidenceError):
    """A layer the user asked for (an option or the policy) is absent from the receipt, or no
    verifier checked it (exit code 14)."""


class RequestDigestError(VerificationError):
    """The request the user gives is not the one whose digest the receipt signs (exit code 11)."""

    exit_code = 11


class ResponseTextError(VerificationError):
    """The response body's text or finish reason is not what the signed output ids decode to
    (exit code 11)."""

    exit_code = 11


class ReceiptSecretError(VerificationError):
    """A check needs the content a format-2 receipt seals, but the receipt secret is missing or does
    not open it (exit code 11)."""

    exit_code = 11


class UnpinnedKeyError(SignatureError):
    """No trusted node key was given and unpinned verification was not allowed (exit code 10)."""

