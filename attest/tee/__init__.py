"""TEE evidence: AMD SEV-SNP, Intel TDX, NVIDIA Hopper (and SIMULATED for development).

Three layers kept apart, as google/go-sev-guest's abi / verify / validate:
parse (`snp`, `tdx`, `nvidia`: bytes -> typed objects), verify (`*_verify`, `tdx_collateral`:
signatures and chains to pinned roots at an explicit time) and validate (`validate`: policy).
`document` is the node evidence JSON, `collect` gathers evidence on this machine, `registry`
looks evidence types up through the plugin hook. See docs/attestation.md.
"""

from __future__ import annotations

from .document import EvidenceDocument, load_document, verify_document
from .errors import (
    AttestationPolicyError,
    CertificateChainError,
    CertificateValidityError,
    CollateralError,
    CollateralExpiredError,
    EndorsementMismatchError,
    EvidenceParseError,
    EvidenceVerificationError,
    KeyBindingError,
    PolicyViolation,
    RevokedError,
    SignatureError,
    UntrustedRootError,
)
from .registry import evidence_types, get_evidence_type
from .roots import TrustStore
from .types import EvidenceType, Verified

__all__ = [
    "AttestationPolicyError",
    "CertificateChainError",
    "CertificateValidityError",
    "CollateralError",
    "CollateralExpiredError",
    "EndorsementMismatchError",
    "EvidenceDocument",
    "EvidenceParseError",
    "EvidenceType",
    "EvidenceVerificationError",
    "KeyBindingError",
    "PolicyViolation",
    "RevokedError",
    "SignatureError",
    "TrustStore",
    "UntrustedRootError",
    "Verified",
    "evidence_types",
    "get_evidence_type",
    "load_document",
    "verify_document",
]
