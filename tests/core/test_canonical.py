"""specguard.canonical: RFC 8785 canonical JSON, length prefixes and tagged hashes."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specguard.canonical import CanonicalizationError, canonical_json, format_number, lp, tagged_hash

# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize("bits,text", RFC8785_NUMBERS)
def test_rfc8785_number_formatting(bits, text):
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert format_number(value) == text


def test_rfc8785_object_ordering_and_strings():
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
             "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}
    out = canonical_json(value).decode()
    keys = [k for k in json.loads(out)]
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonical_json({"a": "\u0000\u001f\"\\/"}) == b'{"a":"\\u0000\\u001f\\"\\\\/"}'
    assert canonical_json([1, True, None, 1.5, "x"]) == b'[1,true,null,1.5,"x"]'


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: 2}, {"a": object()}, b"bytes", "\ud800"])
def test_canonical_json_rejects_non_json(bad):
    with pytest.raises(CanonicalizationError):
        canonical_json(bad)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_canonical_numbers_round_trip(x):
    assert float(format_number(x)) == x


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) |
                    st.floats(allow_nan=False, allow_infinity=False),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=12))
def test_canonical_json_parses_back_and_is_stable(value):
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text


def test_length_prefix_and_tagged_hash_are_unambiguous():
    assert lp(b"ab", b"c") != lp(b"a", b"bc")
    assert tagged_hash("t", b"ab", b"c") != tagged_hash("t", b"a", b"bc")
    assert tagged_hash("t1", b"x") != tagged_hash("t2", b"x")
