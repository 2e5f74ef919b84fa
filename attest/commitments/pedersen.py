"""Pedersen commitments C = m·G + r·H on BLS12-381 G1.

Perfectly hiding (r uniform makes C uniform whatever m is) and computationally binding: two
openings of one C give log_G(H), which nobody knows because H comes from RFC 9380
hash_to_G1 under the tag `group.DST_H`. Messages become scalars with RFC 9380 hash_to_field
(`group.hash_to_scalar`), never by reducing a short hash.
"""

from __future__ import annotations

from ...errors import UsageError, VerificationError
from .group import G1Point, ScalarError, check_scalar, generator_g, generator_h, random_scalar


class OpeningError(VerificationError):
    """(m, r) is not an opening of the commitment."""


def commit(m: int, r: int) -> G1Point:
    """C = m·G + r·H. `m` in [0, r) and `r` in [1, r); raises ScalarError otherwise."""
    check_scalar(m, "message")
    check_scalar(r, "blinding")
    if r == 0:
        raise ScalarError("blinding must be non-zero (a zero blinding does not hide m)", field="blinding",
                          got=0)
    c = generator_g().mul(m) + generator_h().mul(r)
    if c.is_identity:  # m·G = -r·H would reveal log_G(H)
        raise UsageError("commitment is the identity", field="commitment")
    return c


def commit_with_mg(m_point: G1Point, r: int) -> G1Point:
    """C = M + r·H for a precomputed M = m·G (a node commits to one m many times)."""
    check_scalar(r, "blinding")
    if r == 0:
        raise ScalarError("blinding must be non-zero", field="blinding", got=0)
    return m_point + generator_h().mul(r)


def fresh_commitment(m: int) -> tuple[G1Point, int]:
    """A commitment to m with a new uniformly random blinding; returns (C, r)."""
    r = random_scalar()
    return commit(m, r), r


def verify_opening(c: G1Point, m: int, r: int) -> None:
    """Raise OpeningError unless C = m·G + r·H (scalars are range-checked first)."""
    check_scalar(m, "message")
    check_scalar(r, "blinding")
    expected = generator_g().mul(m) + generator_h().mul(r)
    if expected != c:
        raise OpeningError("commitment does not open to this message and blinding", field="commitment",
                           got=c.hex(), expected=expected.hex())
