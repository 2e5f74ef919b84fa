"""BLS12-381 G1 helpers: arithmetic against py_ecc, strict decoding, scalars, RFC 9380 hashing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from py_ecc.bls.hash import expand_message_xmd as py_ecc_expand
from py_ecc.bls.point_compression import compress_G1, decompress_G1
from py_ecc.optimized_bls12_381 import G1, add, curve_order, eq, is_inf, multiply, neg

from specguard.attest.commitments import group as g
from specguard.errors import ParseError, UsageError

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
scalars = st.integers(min_value=0, max_value=curve_order - 1)


def _compressed(pt) -> bytes:
    return int(compress_G1(pt)).to_bytes(48, "big")


def _point_bytes_for_x(x: int, sign: bool = False) -> bytes:
    raw = bytearray(x.to_bytes(48, "big"))
    raw[0] |= 0x80 | (0x20 if sign else 0)
    return bytes(raw)


# x = 1: 1 + 4 is not a square mod p (no point); x = 4: a curve point outside G1 (checked below).
OFF_CURVE_X = 1
OFF_SUBGROUP_X = 4


@SETTINGS
@given(k=scalars)
def test_fixed_and_variable_multiplication_match_py_ecc(k: int) -> None:
    ref = multiply(G1, k)
    fixed = g.generator_g().mul(k)
    var = g.G1Point.from_py_ecc(G1).mul(k)
    assert fixed == var
    assert eq(fixed.to_py_ecc(), ref) or (is_inf(ref) and fixed.is_identity)
    if k:
        assert fixed.to_bytes() == _compressed(ref)


@SETTINGS
@given(a=scalars, b=scalars)
def test_group_law_matches_py_ecc(a: int, b: int) -> None:
    pa, pb = multiply(G1, a), multiply(G1, b)
    qa, qb = g.G1Point.from_py_ecc(pa), g.G1Point.from_py_ecc(pb)
    assert eq((qa + qb).to_py_ecc(), add(pa, pb))
    assert eq((qa - qb).to_py_ecc(), add(pa, neg(pb)))
    assert (qa.mul(b) + qa.mul(-b)).is_identity
    assert (qa + qb) - qb == qa


def test_edge_scalars() -> None:
    G = g.generator_g()
    Gv = g.G1Point.from_py_ecc(G1)
    assert G.mul(0).is_identity and Gv.mul(0).is_identity
    assert G.mul(1) == Gv and Gv.mul(1) == Gv
    assert G.mul(curve_order - 1) == -Gv == Gv.mul(curve_order - 1)
    assert G.mul(curve_order).is_identity  # mul reduces mod r: internal use only
    assert Gv.mul(-1) == -Gv
    assert G.mul(2) == Gv + Gv == Gv.mul(2)
    assert (Gv - Gv).is_identity
    with pytest.raises(g.ScalarError):
        Gv.mul(1.0)  # type: ignore[arg-type]
    with pytest.raises(g.ScalarError):
        Gv.mul(True)


def test_round_trip_and_py_ecc_compatibility() -> None:
    for k in (1, 2, 3, 12345, curve_order - 1, curve_order // 2):
        pt = multiply(G1, k)
        data = _compressed(pt)
        ours = g.decode_point(data)
        assert ours.to_bytes() == data
        assert eq(ours.to_py_ecc(), decompress_G1(compress_G1(pt)))
        assert g.decode_point_hex(data.hex()) == ours


def test_identity_is_rejected() -> None:
    ident = bytes([0xC0]) + bytes(47)
    with pytest.raises(g.IdentityPointError):
        g.decode_point(ident)
    assert g.identity().to_bytes() == ident
    for bad in (bytes([0xC0]) + bytes(46) + b"\x01", bytes([0xE0]) + bytes(47), bytes([0xC1]) + bytes(47)):
        with pytest.raises(g.PointEncodingError) as info:
            g.decode_point(bad)
        assert not isinstance(info.value, g.IdentityPointError)


def test_not_on_curve_and_not_in_subgroup() -> None:
    with pytest.raises(g.NotOnCurveError):
        g.decode_point(_point_bytes_for_x(OFF_CURVE_X))
    off = _point_bytes_for_x(OFF_SUBGROUP_X)
    py_pt = decompress_G1(int.from_bytes(off, "big"))  # py_ecc accepts it: no subgroup check
    assert not is_inf(multiply(py_pt, curve_order))
    for sign in (False, True):
        with pytest.raises(g.NotInSubgroupError) as info:
            g.decode_point(_point_bytes_for_x(OFF_SUBGROUP_X, sign))
        assert info.value.field == "point"
    assert not g.G1Point.from_py_ecc(py_pt).in_subgroup()
    assert g.G1Point.from_py_ecc(multiply(G1, 7)).in_subgroup()


def test_bad_encodings_are_typed() -> None:
    good = g.generator_g().mul(5).to_bytes()
    cases = [b"", good[:47], good + b"\x00", good * 2, bytes(48),  # no compression flag
             bytes([good[0] & 0x7F]) + good[1:],  # compression flag cleared
             _point_bytes_for_x(g.P), _point_bytes_for_x((1 << 381) - 1)]  # x >= p
    for data in cases:
        with pytest.raises(g.PointEncodingError):
            g.decode_point(data)
    for obj in (None, "00" * 48, 5, [0] * 48):
        with pytest.raises(g.PointEncodingError):
            g.decode_point(obj)
    for text in (good.hex().upper(), good.hex()[:-2], good.hex() + "00", "zz" * 48, None, 7, good):
        with pytest.raises(g.PointEncodingError):
            g.decode_point_hex(text)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.binary(min_size=0, max_size=60) | st.binary(min_size=48, max_size=48))
def test_decode_point_never_raises_untyped(data: bytes) -> None:
    try:
        point = g.decode_point(data)
    except g.CommitmentParseError:
        return
    assert point.in_subgroup() and not point.is_identity and point.to_bytes() == data


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.binary(min_size=48, max_size=48))
def test_decode_point_with_compression_flag(data: bytes) -> None:
    data = bytes([data[0] | 0x80]) + data[1:]
    try:
        point = g.decode_point(data)
    except g.CommitmentParseError as exc:
        assert isinstance(exc, ParseError)
        return
    assert point.to_bytes() == data


def test_scalar_checks() -> None:
    assert g.check_scalar(0) == 0 and g.check_scalar(curve_order - 1) == curve_order - 1
    for bad in (curve_order, curve_order + 1, -1, -curve_order, 2**256, True, 1.0, "1", None):
        with pytest.raises(g.ScalarError):
            g.check_scalar(bad)
    assert g.decode_scalar_hex(g.encode_scalar(curve_order - 1).hex()) == curve_order - 1
    for text in ((curve_order).to_bytes(32, "big").hex(), "ff" * 32, "00" * 31, "00" * 33, "0G" * 32,
                 ("00" * 32).upper() + "A", None, 3):
        with pytest.raises(g.ScalarError):
            g.decode_scalar_hex(text)
    for data in (b"\x00" * 31, b"\x00" * 33, "00" * 32, (curve_order + 5).to_bytes(32, "big")):
        with pytest.raises(g.ScalarError):
            g.decode_scalar(data)
    with pytest.raises(g.ScalarError):
        g.encode_scalar(-5)
    r = g.random_scalar()
    assert 0 < r < curve_order


# RFC 9380 Appendix K.1 (expand_message_xmd, SHA-256) and J.9.1 (BLS12381G1_XMD:SHA-256_SSWU_RO_).
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA256-128"
XMD_VECTORS = [
    (b"", 0x20, "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"),
    (b"abc", 0x20, "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"),
    (b"", 0x80, "af84c27ccfd45d41914fdff5df25293e221afc53d8ad2ac06d5e3e29485dadbee0d121587713a3e0dd4d5e69e93e"
                "b7cd4f5df4cd103e188cf60cb02edc3edf18eda8576c412b18ffb658e3dd6ec849469b979d444cf7b26911a08e63"
                "cf31f9dcc541708d3491184472c2c29bb749d4286b004ceb5ee6b9a7fa5b646c993f0ced"),
    (b"abc", 0x80, "abba86a6129e366fc877aab32fc4ffc70120d8996c88aee2fe4b32d6c7b6437a647e6c3163d40b76a73cf6a5674e"
                   "f1d890f95b664ee0afa5359a5c4e07985635bbecbac65d747d3d2da7ec2b8221b17b0ca9dc8a1ac1c07ea6a1e605"
                   "83e2cb00058e77b7b72a298425cd1b941ad4ec65e8afc50303a22c0f99b0509b4c895f40"),
]
H2C_DST = b"QUUX-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_"
H2C_VECTORS = [
    (b"", "052926add2207b76ca4fa57a8734416c8dc95e24501772c814278700eed6d1e4e8cf62d9c09db0fac349612b759e79a1",
     "08ba738453bfed09cb546dbb0783dbb3a5f1f566ed67bb6be0e8c67e2e81a4cc68ee29813bb7994998f3eae0c9c6a265"),
    (b"abc", "03567bc5ef9c690c2ab2ecdf6a96ef1c139cc0b2f284dca0a9a7943388a49a3aee664ba5379a7655d3c68900be2f6903",
     "0b9c15f3fe6e5cf4211f346271d7b01c8f3b28be689c8429c85b67af215533311f0b8dfaaa154fa6b88176c229f2885d"),
]


def test_expand_message_xmd_rfc9380_vectors() -> None:
    for msg, n, want in XMD_VECTORS:
        assert g.expand_message_xmd(msg, XMD_DST, n).hex() == want


@SETTINGS
@given(msg=st.binary(max_size=100), dst=st.binary(min_size=1, max_size=80), n=st.integers(1, 300))
def test_expand_message_xmd_matches_py_ecc(msg: bytes, dst: bytes, n: int) -> None:
    import hashlib

    assert g.expand_message_xmd(msg, dst, n) == py_ecc_expand(msg, dst, n, hashlib.sha256)


def test_expand_message_xmd_limits() -> None:
    with pytest.raises(UsageError):
        g.expand_message_xmd(b"", b"x" * 256, 32)
    with pytest.raises(UsageError):
        g.expand_message_xmd(b"", b"dst", 255 * 32 + 1)
    with pytest.raises(UsageError):
        g.expand_message_xmd(b"", b"dst", 0)


def test_hash_to_g1_rfc9380_vectors() -> None:
    for msg, x_hex, y_hex in H2C_VECTORS:
        assert g.hash_to_g1(msg, H2C_DST).affine() == (int(x_hex, 16), int(y_hex, 16))


def test_hash_to_scalar_is_rfc9380_hash_to_field() -> None:
    uniform = g.expand_message_xmd(b"msg", b"DST", 96)
    want = [int.from_bytes(uniform[:48], "big") % curve_order, int.from_bytes(uniform[48:], "big") % curve_order]
    assert g.hash_to_scalars(b"msg", b"DST", 2) == want
    assert g.hash_to_scalar(b"msg", b"DST") == int.from_bytes(g.expand_message_xmd(b"msg", b"DST", 48),
                                                              "big") % curve_order


def test_generators() -> None:
    G, H = g.generator_g(), g.generator_h()
    assert H == g.hash_to_g1(g.H_MESSAGE, g.DST_H)
    assert H != G and not H.is_identity and H.in_subgroup()
    assert G.to_bytes() == _compressed(G1)
    assert g.decode_point(H.to_bytes()) == H


def test_addition_edge_cases_in_jacobian_and_mixed_form() -> None:
    p = g.G1Point.from_py_ecc(multiply(G1, 11))
    jac = (p + g.identity())._jac  # a Jacobian representative
    two_p = p.mul(2)
    aff = p.affine()
    assert g.G1Point(g._madd(jac, aff)) == two_p  # mixed addition of a point to itself doubles
    assert g._madd(jac, (aff[0], (-aff[1]) % g.P))[2] == 0  # P + (-P) = O
    assert g.G1Point(g._madd(g.INF, aff)) == p
    assert g.G1Point(g._add(g.INF, jac)) == p and g.G1Point(g._add(jac, g.INF)) == p
    assert g._dbl(g.INF)[2] == 0
    scaled = (jac[0] * 4 % g.P, jac[1] * 8 % g.P, jac[2] * 2 % g.P)  # same point, other Z
    assert g.G1Point(scaled) == p and g.G1Point(g._add(jac, scaled)) == two_p
    assert hash(g.G1Point(scaled)) == hash(p)
