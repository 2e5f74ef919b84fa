"""Typed errors of the TEE evidence layers.

Parse (exit 3), verify (exit 4) and validate (exit 5) each have their own base, all rooted in
`specguard.errors`. Every verification failure has its own class so callers and tests can tell
a wrong root from an expired certificate from a bad signature without reading messages.
"""

from __future__ import annotations

from specguard.errors import ParseError, PolicyError, ValidationError, VerificationError


class EvidenceParseError(ParseError):
    """Evidence bytes do not have the documented layout (names the field and the offset)."""


class EvidenceVerificationError(VerificationError):
    """Evidence does not verify cryptographically."""


class SignatureError(EvidenceVerificationError):
    """A signature over evidence bytes does not verify."""


class CertificateChainError(EvidenceVerificationError):
    """A certificate chain is incomplete or a certificate is not signed by its issuer."""


class UntrustedRootError(CertificateChainError):
    """The chain ends at a root that is not pinned (not one of the trusted roots)."""


class CertificateValidityError(CertificateChainError):
    """A certificate is expired or not yet valid at the verification time."""


class RevokedError(CertificateChainError):
    """A certificate is listed on a CRL."""


class EndorsementMismatchError(EvidenceVerificationError):
    """The signing certificate's extensions disagree with the report (TCB, chip ID, FWID)."""


class KeyBindingError(EvidenceVerificationError):
    """Evidence does not attest the node key: bound to another key, GPU evidence offered alone as
    node attestation, or GPU evidence whose nonce is not derived from the CPU evidence."""


class CollateralError(EvidenceVerificationError):
    """Verification collateral (TCB info, QE identity, CRLs) is missing, malformed or invalid."""


class CollateralExpiredError(CollateralError):
    """Collateral is outside its validity window at the verification time."""


class PolicyViolation(ValidationError):
    """One policy rule that failed: names the field, what was found and what was expected."""


class AttestationPolicyError(PolicyError):
    """Evidence verified but violates the attestation policy; `failures` lists every violation."""
