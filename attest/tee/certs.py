"""X.509 helpers: load certificates, verify one signature, build a chain to pinned roots.

Chains are built from the leaf upwards: each issuer is looked up first among the trusted
roots, then among the candidate intermediates (pinned ones and those shipped with the
evidence). Every certificate's validity window is checked at the verification time `at`,
which is always an input (test vectors are only valid in the past).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import (
    CertificateChainError,
    CertificateValidityError,
    EvidenceParseError,
    RevokedError,
    UntrustedRootError,
)

MAX_CHAIN_DEPTH = 8


def utc(value: dt.datetime | None) -> dt.datetime:
    """`value` as an aware UTC datetime; None means now."""
    if value is None:
        return dt.datetime.now(dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def load_certificates(data: bytes | str, context: str = "certificates") -> list[x509.Certificate]:
    """Certificates from PEM (one or more) or a single DER blob; typed error otherwise."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    with warnings.catch_warnings():
        # AMD VCEK/VLEK certificates have serial number 0 (see docs/attestation.md)
        warnings.simplefilter("ignore")
        try:
            if b"-----BEGIN CERTIFICATE-----" in raw:
                certs = x509.load_pem_x509_certificates(raw.rstrip(b"\x00"))
            else:
                certs = [x509.load_der_x509_certificate(raw)]
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise EvidenceParseError(f"{context}: not a valid PEM/DER certificate: {exc}", field=context) from exc
    if not certs:
        raise EvidenceParseError(f"{context}: no certificate found", field=context)
    return certs


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check that `issuer`'s key signed `cert` (RSA PKCS#1/PSS, ECDSA or Ed25519)."""
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad = cert.signature_algorithm_parameters
            if not isinstance(pad, padding.PSS | padding.PKCS1v15):
                raise InvalidSignature
            hash_alg = cert.signature_hash_algorithm
            if hash_alg is None:
                raise InvalidSignature
            key.verify(cert.signature, cert.tbs_certificate_bytes, pad, hash_alg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            params = cert.signature_algorithm_parameters
            if not isinstance(params, ec.ECDSA):
                raise InvalidSignature
            key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            raise InvalidSignature
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(
            "certificate signature does not verify with its issuer's key",
            field=f"certificate {name(cert)}",
            got=f"issuer {name(issuer)}",
            expected="a valid signature by the issuer",
        ) from exc


def check_validity(cert: x509.Certificate, at: dt.datetime, role: str) -> None:
    """The certificate is valid at `at` (inclusive bounds)."""
    at = utc(at)
    if at < cert.not_valid_before_utc:
        raise CertificateValidityError(
            f"{role} certificate is not yet valid at the verification time",
            field=f"{role} {name(cert)}",
            got=at.isoformat(),
            expected=f"not before {cert.not_valid_before_utc.isoformat()}",
        )
    if at > cert.not_valid_after_utc:
        raise CertificateValidityError(
            f"{role} certificate is expired at the verification time",
            field=f"{role} {name(cert)}",
            got=at.isoformat(),
            expected=f"not after {cert.not_valid_after_utc.isoformat()}",
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return True  # vendor CAs (AMD ASK/ARK) may omit basicConstraints
    except ValueError:
        return False


@dataclass(frozen=True)
class Chain:
    """A verified chain, leaf first, ending at a pinned root."""

    certificates: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def root(self) -> x509.Certificate:
        return self.certificates[-1]

    def subjects(self) -> list[str]:
        return [name(c) for c in self.certificates]


def build_chain(
    leaf: x509.Certificate,
    intermediates: Iterable[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    role: str = "leaf",
) -> Chain:
    """Verify `leaf` up to one of `roots` at time `at`; raise a typed error on any gap."""
    if not roots:
        raise UntrustedRootError("no trusted root certificates were given", field="roots")
    at = utc(at)
    root_ders = {der(r) for r in roots}
    pool = [c for c in intermediates if der(c) not in root_ders]
    path = [leaf]
    check_validity(leaf, at, role)
    current = leaf
    for _ in range(MAX_CHAIN_DEPTH):
        if der(current) in root_ders:
            return Chain(tuple(path))
        for root in roots:
            if root.subject == current.issuer:
                verify_signed_by(current, root)
                check_validity(root, at, "root")
                path.append(root)
                return Chain(tuple(path))
        candidates = [c for c in pool if c.subject == current.issuer and all(c is not p for p in path)]
        if not candidates:
            if current.issuer == current.subject:
                raise UntrustedRootError(
                    "certificate chain ends at a root that is not pinned",
                    field=f"root {name(current)}",
                    got=der(current)[-32:],
                    expected=[name(r) for r in roots],
                )
            raise CertificateChainError(
                "certificate chain is incomplete: no certificate issued this one",
                field=f"certificate {name(current)}",
                got=f"issuer {current.issuer.rfc4514_string()} not found",
                expected="the issuer among the given or pinned certificates",
            )
        last_error: CertificateChainError | None = None
        for cand in candidates:
            try:
                verify_signed_by(current, cand)
            except CertificateChainError as exc:
                last_error = exc
                continue
            if not _is_ca(cand):
                raise CertificateChainError(
                    "issuer certificate is not a CA", field=f"certificate {name(cand)}", got="CA:FALSE"
                )
            check_validity(cand, at, "intermediate")
            path.append(cand)
            current = cand
            break
        else:
            assert last_error is not None
            raise last_error
    raise CertificateChainError("certificate chain is too long", field="chain", got=len(path))


def check_not_revoked(cert: x509.Certificate, crl: x509.CertificateRevocationList, role: str) -> None:
    """`cert` is not on `crl` (the CRL must be issued by `cert`'s issuer)."""
    if crl.issuer != cert.issuer:
        raise CertificateChainError(
            f"CRL for the {role} certificate has the wrong issuer",
            field=f"{role} CRL issuer",
            got=crl.issuer.rfc4514_string(),
            expected=cert.issuer.rfc4514_string(),
        )
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        raise RevokedError(
            f"{role} certificate is revoked",
            field=f"{role} {name(cert)}",
            got=f"serial {cert.serial_number:x} revoked {entry.revocation_date_utc.isoformat()}",
            expected="not on the CRL",
        )


def verify_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, at: dt.datetime, role: str) -> None:
    """The CRL is signed by `issuer` and current at `at`."""
    from .errors import CollateralExpiredError

    if crl.issuer != issuer.subject:
        raise CertificateChainError(
            f"{role} CRL is not issued by the expected CA",
            field=f"{role} CRL",
            got=crl.issuer.rfc4514_string(),
            expected=name(issuer),
        )
    try:
        ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        ok = False
    if not ok:
        raise CertificateChainError(f"{role} CRL signature does not verify", field=f"{role} CRL")
    at = utc(at)
    next_update = crl.next_update_utc
    if at < crl.last_update_utc or (next_update is not None and at > next_update):
        raise CollateralExpiredError(
            f"{role} CRL is not current at the verification time",
            field=f"{role} CRL",
            got=at.isoformat(),
            expected=f"{crl.last_update_utc.isoformat()} .. {next_update.isoformat() if next_update else 'open'}",
        )


def load_crl(data: bytes, context: str) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (ValueError, TypeError) as exc:
        from .errors import CollateralError

        raise CollateralError(f"{context} is not a valid CRL: {exc}", field=context) from exc


def ecdsa_verify(
    key: ec.EllipticCurvePublicKey, r: int, s: int, message: bytes, hash_alg: hashes.HashAlgorithm
) -> bool:
    """True iff (r, s) is a valid ECDSA signature over `message`; r and s are range-checked."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    order = _ORDERS.get(key.curve.name)
    if order is None or not (0 < r < order and 0 < s < order):
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hash_alg))
    except (InvalidSignature, ValueError):
        return False
    return True


_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
}
