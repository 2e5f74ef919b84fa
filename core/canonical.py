"""Canonical bytes for hashing and signing.

- `canonical_json`: RFC 8785 (JSON Canonicalization Scheme) for the JSON values specguard
  signs: objects with string keys sorted by UTF-16 code units, no insignificant whitespace,
  ECMAScript number formatting, minimal string escaping.
- `lp`: length-prefixed concatenation (8-byte big-endian length before each field), used with a
  domain-separation tag as the first field wherever raw bytes are hashed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import SpecguardError


class CanonicalizationError(SpecguardError):
    """A value cannot be expressed as RFC 8785 JSON (NaN, non-string key, unknown type)."""


def canonical_json(value: Any) -> bytes:
    """Serialize `value` as RFC 8785 canonical JSON (UTF-8 bytes)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_digest(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return "sha256:" + sha256_hex(canonical_json(value))


def lp(*fields: bytes) -> bytes:
    """Length-prefix each field with its 8-byte big-endian length and concatenate."""
    return b"".join(len(f).to_bytes(8, "big") + f for f in fields)


def tagged_hash(tag: str, *fields: bytes, algorithm: str = "sha256") -> bytes:
    """Hash of the domain tag and the fields, each length-prefixed."""
    return hashlib.new(algorithm, lp(tag.encode("utf-8"), *fields)).digest()


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(format_number(value))
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, Mapping):
        _encode_object(value, out)
    elif isinstance(value, list | tuple):
        _encode_array(value, out)
    else:
        raise CanonicalizationError("value is not JSON", got=type(value).__name__)


def _encode_object(value: Mapping[Any, Any], out: list[str]) -> None:
    """Members sorted by the UTF-16 code units of their keys (RFC 8785 §3.2.3)."""
    keys = list(value.keys())
    for key in keys:
        if not isinstance(key, str):
            raise CanonicalizationError("object keys must be strings", got=repr(key))
    keys.sort(key=lambda k: k.encode("utf-16-be"))
    out.append("{")
    for i, key in enumerate(keys):
        if i:
            out.append(",")
        out.append(_encode_string(key))
        out.append(":")
        _encode(value[key], out)
    out.append("}")


def _encode_array(value: list[Any] | tuple[Any, ...], out: list[str]) -> None:
    out.append("[")
    for i, item in enumerate(value):
        if i:
            out.append(",")
        _encode(item, out)
    out.append("]")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _encode_string(s: str) -> str:
    parts = ['"']
    for ch in s:
        if ch in _ESCAPES:
            parts.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            parts.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise CanonicalizationError("lone surrogate in string", got=hex(ord(ch)))
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def format_number(x: float) -> str:
    """ECMAScript Number.prototype.toString for a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(x):
        raise CanonicalizationError("NaN and Infinity are not JSON numbers", got=x)
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    digits, exponent = _shortest_digits(abs(x))
    k = len(digits)
    n = exponent  # value = 0.digits * 10**n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mant = digits[0] + ("." + digits[1:] if k > 1 else "")
        body = f"{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + body


def _shortest_digits(x: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of x and n such that x = 0.DIGITS * 10**n."""
    text = repr(x)
    if "e" in text:
        mant, exp = text.split("e")
        exp_i = int(exp)
    else:
        mant, exp_i = text, 0
    if "." in mant:
        whole, frac = mant.split(".")
    else:
        whole, frac = mant, ""
    if frac == "0":
        frac = ""
    digits = (whole + frac).lstrip("0")
    lead_zeros = len(whole + frac) - len((whole + frac).lstrip("0"))
    n = len(whole) + exp_i - lead_zeros
    digits = digits.rstrip("0") or "0"
    return digits, n


def iter_canonical(values: Iterable[Any]) -> Iterable[bytes]:
    for v in values:
        yield canonical_json(v)
