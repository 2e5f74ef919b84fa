"""Pinned trust anchors shipped as package data (specguard/attest/roots/).

- AMD: per product line (Milan, Genoa, Turin) the ARK (root) and the ASK (VCEK issuer) or
  ASVK (VLEK issuer), from AMD's Key Distribution Service as pinned by google/go-sev-guest.
- Intel: the Intel SGX Root CA (issues the PCK and TCB-signing chains).
- NVIDIA: the NVIDIA Device Identity CA (root of the GPU device-identity chain).

A `TrustStore` holds roots (anchors) and pinned intermediates. Tests and operators may pass
their own store (e.g. a test CA); the default is always the pinned one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from cryptography import x509

from .certs import load_certificates

ROOTS_PACKAGE = "specguard.attest"


@dataclass(frozen=True)
class TrustStore:
    """Trust anchors (`roots`) plus pinned, still-verified intermediates."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = field(default_factory=tuple)
    label: str = "custom"


def _read(vendor: str) -> list[tuple[str, bytes]]:
    folder = resources.files(ROOTS_PACKAGE).joinpath("roots", vendor)
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.name.endswith(".pem"))


def _split(vendor: str) -> TrustStore:
    roots: list[x509.Certificate] = []
    inter: list[x509.Certificate] = []
    for fname, data in _read(vendor):
        for cert in load_certificates(data, f"pinned {vendor}/{fname}"):
            (roots if cert.subject == cert.issuer else inter).append(cert)
    return TrustStore(tuple(roots), tuple(inter), label=f"pinned:{vendor}")


@cache
def amd() -> TrustStore:
    """AMD ARKs (roots) and ASKs/ASVKs (pinned intermediates) for Milan, Genoa and Turin."""
    return _split("amd")


@cache
def intel() -> TrustStore:
    """The Intel SGX Root CA."""
    return _split("intel")


@cache
def nvidia() -> TrustStore:
    """The NVIDIA Device Identity CA."""
    return _split("nvidia")


def custom(roots: list[x509.Certificate], intermediates: list[x509.Certificate] | None = None) -> TrustStore:
    """A trust store of the caller's choosing (test CAs, private deployments)."""
    return TrustStore(tuple(roots), tuple(intermediates or ()), label="custom")
