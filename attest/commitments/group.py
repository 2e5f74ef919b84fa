"""BLS12-381 G1 for commitment proofs: points, strict encoding, scalars, hashing.

Why not call py_ecc for the arithmetic: py_ecc's `multiply` is recursive, rejects negative
scalars and never reduces them, and each field operation allocates a Python object. Here points
are Jacobian coordinates over plain integers mod p (x = X/Z², y = Y/Z³, identity: Z = 0), with
fixed-base window tables for G and H (and any other long-lived base, such as a node's published
commitment) and width-5 wNAF for variable bases. py_ecc stays the reference: its
`hash_to_G1` (RFC 9380, BLS12381G1_XMD:SHA-256_SSWU_RO_) derives H, its generator and curve
order are used as constants, and the tests check every routine here against its `multiply`,
`compress_G1` and `decompress_G1`.

Encoding is the 48-byte compressed form of ZCash's BLS12-381 serialization (which py_ecc
implements): the x-coordinate big-endian with three flag bits in the top of the first byte
(0x80 compressed, 0x40 infinity, 0x20 "y is the larger root"). `decode_point` accepts only
canonical encodings of points on the curve, in the prime-order subgroup, other than the
identity; anything else raises a typed `CommitmentParseError` subclass naming the field.

Not constant time (neither is py_ecc): secret scalars influence timing. See docs/commitments.md.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ...errors import ParseError, UsageError
from ._py_ecc import G1 as _PY_ECC_G1
from ._py_ecc import curve_order as _CURVE_ORDER
from ._py_ecc import field_modulus as _FIELD_MODULUS
from ._py_ecc import hash_to_G1 as _py_ecc_hash_to_G1

#: Base field modulus p and prime subgroup order r of BLS12-381.
P: int = int(_FIELD_MODULUS)
R: int = int(_CURVE_ORDER)
CURVE_B = 4  # E: y² = x³ + 4 over F_p
POINT_SIZE = 48
SCALAR_SIZE = 32

#: RFC 9380 expand_message_xmd output per field element (ceil((ceil(log2 r) + 128) / 8) = 48).
HASH_TO_FIELD_L = 48

#: Domain-separation tags (RFC 9380 §3.1 style). Documented in docs/commitments.md.
DST_H = b"SPECGUARD-V1-PEDERSEN-H_BLS12381G1_XMD:SHA-256_SSWU_RO_"
H_MESSAGE = b"specguard pedersen generator H"

_FLAG_COMPRESSED = 0x80
_FLAG_INFINITY = 0x40
_FLAG_SIGN = 0x20
_X_MASK = (1 << 381) - 1
_SQRT_EXP = (P + 1) // 4  # p ≡ 3 (mod 4)
_HEX = re.compile(r"[0-9a-f]*")


class CommitmentParseError(ParseError):
    """A point, scalar or proof document does not have the documented encoding."""


class PointEncodingError(CommitmentParseError):
    """Bytes are not a canonical 48-byte compressed G1 encoding (length, flags, x >= p)."""


class NotOnCurveError(PointEncodingError):
    """The x-coordinate has no point on y² = x³ + 4."""


class NotInSubgroupError(PointEncodingError):
    """The point is on the curve but outside the prime-order subgroup G1."""


class IdentityPointError(PointEncodingError):
    """The point is the identity, which no commitment, proof or base may be."""


class ScalarError(CommitmentParseError):
    """A scalar is not an integer in [0, r) or not its 32-byte big-endian encoding."""


# --- Jacobian arithmetic over integers -------------------------------------------------------

Jac = tuple[int, int, int]
Aff = tuple[int, int]
INF: Jac = (1, 1, 0)


def _dbl(p: Jac) -> Jac:
    """dbl-2009-l (a = 0)."""
    x, y, z = p
    if not z:
        return INF
    a = x * x % P
    b = y * y % P
    c = b * b % P
    d = 2 * ((x + b) * (x + b) - a - c) % P
    e = 3 * a
    f = e * e % P
    x3 = (f - 2 * d) % P
    y3 = (e * (d - x3) - 8 * c) % P
    z3 = 2 * y * z % P
    return (x3, y3, z3)


def _add(p: Jac, q: Jac) -> Jac:
    """add-2007-bl, with the identity and doubling cases handled."""
    x1, y1, z1 = p
    x2, y2, z2 = q
    if not z1:
        return q
    if not z2:
        return p
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    u2 = x2 * z1z1 % P
    s1 = y1 * z2 * z2z2 % P
    s2 = y2 * z1 * z1z1 % P
    h = (u2 - u1) % P
    rr = 2 * (s2 - s1) % P
    if not h:
        return _dbl(p) if not rr else INF
    i = 4 * h * h % P
    j = h * i % P
    v = u1 * i % P
    x3 = (rr * rr - j - 2 * v) % P
    y3 = (rr * (v - x3) - 2 * s1 * j) % P
    z3 = ((z1 + z2) * (z1 + z2) - z1z1 - z2z2) * h % P
    return (x3, y3, z3)


def _madd(p: Jac, q: Aff) -> Jac:
    """madd-2007-bl: Jacobian + affine (q is never the identity)."""
    x1, y1, z1 = p
    x2, y2 = q
    if not z1:
        return (x2, y2, 1)
    z1z1 = z1 * z1 % P
    u2 = x2 * z1z1 % P
    s2 = y2 * z1 * z1z1 % P
    h = (u2 - x1) % P
    rr = 2 * (s2 - y1) % P
    if not h:
        return _dbl((x2, y2, 1)) if not rr else INF
    hh = h * h % P
    i = 4 * hh
    j = h * i % P
    v = x1 * i % P
    x3 = (rr * rr - j - 2 * v) % P
    y3 = (rr * (v - x3) - 2 * y1 * j) % P
    z3 = ((z1 + h) * (z1 + h) - z1z1 - hh) % P
    return (x3, y3, z3)


def _neg(p: Jac) -> Jac:
    return (p[0], (-p[1]) % P, p[2])


def _to_affine(p: Jac) -> Aff | None:
    x, y, z = p
    if not z:
        return None
    zi = pow(z, -1, P)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def _batch_affine(points: Sequence[Jac]) -> list[Aff]:
    """Normalize many non-identity points with one inversion (Montgomery's trick)."""
    prefix = []
    acc = 1
    for _, _, z in points:
        prefix.append(acc)
        acc = acc * z % P
    inv = pow(acc, -1, P)
    out: list[Aff] = [(0, 0)] * len(points)
    for k in range(len(points) - 1, -1, -1):
        x, y, z = points[k]
        zi = inv * prefix[k] % P
        inv = inv * z % P
        zi2 = zi * zi % P
        out[k] = (x * zi2 % P, y * zi2 * zi % P)
    return out


def _wnaf(k: int, w: int = 5) -> list[int]:
    """Width-w non-adjacent form of k >= 0, least significant digit first."""
    digits = []
    full, half = 1 << w, 1 << (w - 1)
    while k:
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        digits.append(d)
        k >>= 1
    return digits


def _mul_var(p: Jac, k: int) -> Jac:
    """k·p for a G1 base by width-5 wNAF; k is reduced mod r first."""
    return _mul_wnaf(p, k % R)


def _mul_wnaf(p: Jac, k: int) -> Jac:
    """k·p for any curve point and k >= 0, not reduced (subgroup tests multiply by r itself)."""
    if not k or not p[2]:
        return INF
    odd = [p]
    twice = _dbl(p)
    for _ in range(7):
        odd.append(_add(odd[-1], twice))
    if any(not q[2] for q in odd):  # only for points of tiny order, never in G1
        return _mul_ladder(p, k)
    table = _batch_affine(odd)
    neg_table = [(x, (-y) % P) for x, y in table]
    acc = INF
    for d in reversed(_wnaf(k)):
        acc = _dbl(acc)
        if d > 0:
            acc = _madd(acc, table[d >> 1])
        elif d < 0:
            acc = _madd(acc, neg_table[(-d) >> 1])
    return acc


def _mul_ladder(p: Jac, k: int) -> Jac:
    """Plain double-and-add for points whose small multiples hit the identity (never in G1)."""
    acc = INF
    for bit in bin(k)[2:]:
        acc = _dbl(acc)
        if bit == "1":
            acc = _add(acc, p)
    return acc


class FixedBase:
    """Window table for one base: k·B costs ceil(256 / w) mixed additions and no doublings.

    rows[i][j - 1] = j·2^(w·i)·B in affine form, for j in 1 .. 2^w - 1.
    """

    def __init__(self, base: Jac, window: int = 8) -> None:
        if not base[2]:
            raise IdentityPointError("a fixed base must not be the identity", field="base")
        self.window = window
        self.rows: list[list[Aff]] = []
        nrows = -(-R.bit_length() // window)
        row_base = base
        for _ in range(nrows):
            entries = [row_base]
            for _ in range((1 << window) - 2):
                entries.append(_add(entries[-1], row_base))
            self.rows.append(_batch_affine(entries))
            for _ in range(window):
                row_base = _dbl(row_base)

    def mul(self, k: int) -> Jac:
        """k·B for k reduced mod r."""
        k %= R
        mask = (1 << self.window) - 1
        acc = INF
        i = 0
        while k:
            d = k & mask
            if d:
                acc = _madd(acc, self.rows[i][d - 1])
            k >>= self.window
            i += 1
        return acc


# --- points ----------------------------------------------------------------------------------


class G1Point:
    """An element of the prime-order subgroup G1 (or the identity, as an intermediate result).

    Immutable; `+`, `-`, unary `-`, `k * point` and `==` are group operations. Use `decode_point`
    for bytes from anyone else: it performs all the checks. `FixedBase` tables can be attached
    with `with_table()` for bases that are multiplied often.
    """

    __slots__ = ("_jac", "_table", "_bytes")

    def __init__(self, jac: Jac, table: FixedBase | None = None) -> None:
        self._jac = jac
        self._table = table
        self._bytes: bytes | None = None

    @property
    def is_identity(self) -> bool:
        return not self._jac[2]

    def __add__(self, other: G1Point) -> G1Point:
        return G1Point(_add(self._jac, other._jac))

    def __neg__(self) -> G1Point:
        return G1Point(_neg(self._jac))

    def __sub__(self, other: G1Point) -> G1Point:
        return G1Point(_add(self._jac, _neg(other._jac)))

    def __rmul__(self, k: int) -> G1Point:
        return self.mul(k)

    def mul(self, k: int) -> G1Point:
        """k·self with k taken mod r (uses the fixed-base table when one is attached)."""
        if not isinstance(k, int) or isinstance(k, bool):
            raise ScalarError("scalar must be an integer", field="scalar", got=type(k).__name__)
        if self._table is not None:
            return G1Point(self._table.mul(k))
        return G1Point(_mul_var(self._jac, k))

    def with_table(self, window: int = 8) -> G1Point:
        """The same point with a fixed-base table attached (costs ~2^w·256/w additions once)."""
        return G1Point(self._jac, FixedBase(self._jac, window))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, G1Point):
            return NotImplemented
        x1, y1, z1 = self._jac
        x2, y2, z2 = other._jac
        if not z1 or not z2:
            return not z1 and not z2
        z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
        return (x1 * z2z2 - x2 * z1z1) % P == 0 and (y1 * z2z2 * z2 - y2 * z1z1 * z1) % P == 0

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"G1Point({self.to_bytes().hex()})"

    def affine(self) -> Aff | None:
        """(x, y) as integers, or None for the identity."""
        return _to_affine(self._jac)

    def to_bytes(self) -> bytes:
        """48-byte ZCash compressed encoding."""
        if self._bytes is None:
            aff = self.affine()
            if aff is None:
                self._bytes = bytes([_FLAG_COMPRESSED | _FLAG_INFINITY]) + bytes(POINT_SIZE - 1)
            else:
                x, y = aff
                flags = _FLAG_COMPRESSED | (_FLAG_SIGN if 2 * y > P else 0)
                raw = bytearray(x.to_bytes(POINT_SIZE, "big"))
                raw[0] |= flags
                self._bytes = bytes(raw)
        return self._bytes

    def hex(self) -> str:
        return self.to_bytes().hex()

    def in_subgroup(self) -> bool:
        """True when r·self is the identity (i.e. self is in G1)."""
        return not _mul_wnaf(self._jac, R)[2]

    @classmethod
    def from_py_ecc(cls, pt: Any) -> G1Point:
        """Convert a py_ecc optimized_bls12_381 (x, y, z) point (x = X/Z, y = Y/Z)."""
        x, y, z = (int(c.n) for c in pt)
        if not z:
            return cls(INF)
        return cls((x * z % P, y * z * z % P, z))

    def to_py_ecc(self) -> Any:
        """The same point in py_ecc's optimized representation."""
        from py_ecc.fields import optimized_bls12_381_FQ as FQ

        x, y, z = self._jac
        if not z:
            return (FQ(1), FQ(1), FQ(0))
        return (FQ(x * z % P), FQ(y), FQ(z * z * z % P))


def identity() -> G1Point:
    return G1Point(INF)


def decode_point(data: Any, field: str = "point") -> G1Point:
    """Strictly decode a 48-byte compressed G1 point from anyone: on curve, in G1, not identity."""
    if not isinstance(data, bytes | bytearray):
        raise PointEncodingError("point must be bytes", field=field, got=type(data).__name__)
    data = bytes(data)
    if len(data) != POINT_SIZE:
        raise PointEncodingError("compressed G1 point must be 48 bytes", field=field, got=len(data),
                                 expected=POINT_SIZE)
    flags = data[0] & 0xE0
    if not flags & _FLAG_COMPRESSED:
        raise PointEncodingError("compression flag (0x80) is not set; only compressed points are accepted",
                                 field=field, got=f"{data[0]:#04x}")
    if flags & _FLAG_INFINITY:
        if flags & _FLAG_SIGN or any(data[1:]) or data[0] & 0x1F:
            raise PointEncodingError("infinity flag with non-zero payload or sign flag", field=field,
                                     got=data.hex(), expected="c0" + "00" * 47)
        raise IdentityPointError("point is the identity", field=field, got=data.hex())
    x = int.from_bytes(data, "big") & _X_MASK
    if x >= P:
        raise PointEncodingError("x-coordinate is not reduced mod p", field=field, got=hex(x))
    rhs = (x * x * x + CURVE_B) % P
    y = pow(rhs, _SQRT_EXP, P)
    if y * y % P != rhs:
        raise NotOnCurveError("no point on y² = x³ + 4 has this x-coordinate", field=field, got=data.hex())
    want_large = bool(flags & _FLAG_SIGN)
    if y == 0 and want_large:
        raise PointEncodingError("sign flag set for y = 0", field=field, got=data.hex())
    if (2 * y > P) != want_large:
        y = P - y
    point = G1Point((x, y, 1))
    if not point.in_subgroup():
        raise NotInSubgroupError("point is on the curve but not in the prime-order subgroup G1",
                                 field=field, got=data.hex())
    point._bytes = data
    return point


@lru_cache(maxsize=256)
def _decode_cached(data: bytes, field: str) -> G1Point:
    return decode_point(data, field)


def decode_point_hex(text: Any, field: str = "point", cache: bool = False) -> G1Point:
    """Decode 96 lowercase hex characters with `decode_point`.

    `cache=True` memoizes successful decodings of long-lived points (a node's published
    commitment); decoding is deterministic, so a cached result is as checked as a fresh one.
    """
    raw = hex_bytes(text, field, POINT_SIZE, PointEncodingError)
    return _decode_cached(raw, field) if cache else decode_point(raw, field)


def hex_bytes(text: Any, field: str, size: int, error: type[CommitmentParseError] = CommitmentParseError) -> bytes:
    """Bytes from exactly 2·size lowercase hex characters, else `error`."""
    if not isinstance(text, str):
        raise error("expected a hex string", field=field, got=type(text).__name__)
    if len(text) != 2 * size:
        raise error(f"expected {size} bytes as {2 * size} hex characters", field=field, got=len(text),
                    expected=2 * size)
    if not _HEX.fullmatch(text):
        raise error("expected lowercase hexadecimal", field=field, got=text)
    return bytes.fromhex(text)


# --- scalars ---------------------------------------------------------------------------------


def check_scalar(value: Any, field: str = "scalar") -> int:
    """Return value if it is an int in [0, r); raise ScalarError otherwise (no silent reduction)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ScalarError("scalar must be an integer", field=field, got=type(value).__name__)
    if value < 0:
        raise ScalarError("scalar must not be negative", field=field, got=value)
    if value >= R:
        raise ScalarError("scalar must be less than the group order r", field=field, got=hex(value),
                          expected=f"< {hex(R)}")
    return value


def encode_scalar(k: int) -> bytes:
    return check_scalar(k).to_bytes(SCALAR_SIZE, "big")


def decode_scalar(data: Any, field: str = "scalar") -> int:
    """32-byte big-endian scalar, < r."""
    if not isinstance(data, bytes | bytearray) or len(data) != SCALAR_SIZE:
        got = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
        raise ScalarError("scalar must be 32 bytes", field=field, got=got, expected=SCALAR_SIZE)
    return check_scalar(int.from_bytes(data, "big"), field)


def decode_scalar_hex(text: Any, field: str = "scalar") -> int:
    return decode_scalar(hex_bytes(text, field, SCALAR_SIZE, ScalarError), field)


def random_scalar() -> int:
    """Uniform non-zero scalar from the OS CSPRNG (64 bytes reduced mod r: bias < 2^-250)."""
    while True:
        k = int.from_bytes(secrets.token_bytes(64), "big") % R
        if k:
            return k


# --- hashing (RFC 9380) ------------------------------------------------------------------------


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 §5.3.1 expand_message_xmd with SHA-256."""
    b_len, s_len = 32, 64
    ell = -(-len_in_bytes // b_len)
    if ell > 255 or len_in_bytes > 65535 or len_in_bytes < 1:
        raise UsageError("expand_message_xmd: requested length out of range", field="len_in_bytes",
                         got=len_in_bytes, expected="1 .. 8160")
    if len(dst) > 255:
        raise UsageError("expand_message_xmd: DST longer than 255 bytes", field="dst", got=len(dst),
                         expected="<= 255")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(s_len) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha256(msg_prime).digest()
    bi = hashlib.sha256(b0 + b"\x01" + dst_prime).digest()
    out = [bi]
    for i in range(2, ell + 1):
        bi = hashlib.sha256(bytes(a ^ b for a, b in zip(b0, bi, strict=True)) + bytes([i]) + dst_prime).digest()
        out.append(bi)
    return b"".join(out)[:len_in_bytes]


def hash_to_scalars(msg: bytes, dst: bytes, count: int = 1) -> list[int]:
    """RFC 9380 §5.2 hash_to_field into F_r (m = 1, L = 48): `count` scalars with bias < 2^-128."""
    uniform = expand_message_xmd(msg, dst, count * HASH_TO_FIELD_L)
    return [
        int.from_bytes(uniform[i * HASH_TO_FIELD_L:(i + 1) * HASH_TO_FIELD_L], "big") % R
        for i in range(count)
    ]


def hash_to_scalar(msg: bytes, dst: bytes) -> int:
    return hash_to_scalars(msg, dst, 1)[0]


def hash_to_g1(msg: bytes, dst: bytes) -> G1Point:
    """RFC 9380 hash_to_curve, suite BLS12381G1_XMD:SHA-256_SSWU_RO_ (py_ecc's implementation)."""
    return G1Point.from_py_ecc(_py_ecc_hash_to_G1(msg, dst, hashlib.sha256))


# --- the two generators ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def generator_g() -> G1Point:
    """The standard BLS12-381 G1 generator, with its fixed-base table."""
    return G1Point.from_py_ecc(_PY_ECC_G1).with_table()


@lru_cache(maxsize=1)
def generator_h() -> G1Point:
    """H = hash_to_G1(H_MESSAGE, DST_H): nobody knows log_G(H). With its fixed-base table."""
    h = hash_to_g1(H_MESSAGE, DST_H)
    if h.is_identity or not h.in_subgroup():
        raise RuntimeError("hash_to_G1 returned a point outside G1")  # impossible per RFC 9380
    return h.with_table()
