"""The one strict JSON loader for everything specguard reads from outside.

Receipts, responses, requests, transcripts, proofs, log answers, verifier request bodies: every
JSON document that comes from a file, a peer or a client goes through `loads_strict`, which
either returns the value or raises a typed `ParseError` (exit code 3, HTTP 400) naming what it
was reading. Refused: bytes that are not UTF-8, invalid JSON, duplicate object keys, NaN and
Infinity (also a number like 1e999 that only overflows to infinity), integers longer than
`MAX_INT_DIGITS` digits (Python's own limit, 4300, surfaces as a bare ValueError) and nesting deeper
than the interpreter can follow.

`Require` is the one set of structure checks over a parsed document (a condition, an exact key
set, a non-negative integer), each failing with the reader's own `ParseError` subclass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParseError

#: longest integer (in decimal digits, sign excluded) a document may carry; ids, sizes and seeds
#: need at most 20
MAX_INT_DIGITS = 1000

__all__ = ["loads_strict", "load_json_file", "MAX_INT_DIGITS", "Require"]


class _StrictHooks:
    """json.loads hooks that raise `error` (naming `what`) instead of accepting loose JSON."""

    def __init__(self, what: str, error: type[ParseError]) -> None:
        self.what, self.error = what, error

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise self.error("duplicate key in JSON object", field=f"{self.what}.{k}")
            out[k] = v
        return out

    def constant(self, name: str) -> Any:
        raise self.error("NaN/Infinity are not JSON", field=self.what, got=name)

    def integer(self, text: str) -> int:
        digits = len(text) - (text[0] == "-")
        if digits > MAX_INT_DIGITS:
            raise self.error("JSON integer too long", field=self.what, got=f"{digits} digits",
                             expected=f"<= {MAX_INT_DIGITS} digits")
        return int(text)

    def real(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise self.error("JSON number out of range (it would be infinite)", field=self.what, got=text[:40])
        return value


def loads_strict(data: bytes | bytearray | str, what: str, error: type[ParseError] = ParseError) -> Any:
    """JSON without duplicate keys, NaN/Infinity or oversized integers; any failure is `error`."""
    hooks = _StrictHooks(what, error)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        if not isinstance(text, str):
            raise error("JSON input must be bytes or text", field=what, got=type(data).__name__)
        return json.loads(text, object_pairs_hook=hooks.pairs, parse_constant=hooks.constant,
                          parse_int=hooks.integer, parse_float=hooks.real)
    except UnicodeDecodeError as exc:
        raise error("not UTF-8", field=what, offset=exc.start) from exc
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc.msg}", field=what, offset=exc.pos) from exc
    except RecursionError as exc:
        raise error("JSON nested too deeply", field=what) from exc
    except ParseError:
        raise
    except ValueError as exc:  # anything else the decoder refuses
        raise error(f"invalid JSON: {exc}"[:200], field=what) from exc


def load_json_file(path: Path | str, what: str, error: type[ParseError] = ParseError) -> Any:
    """Read a JSON file strictly (`error` on unreadable or bad bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror}", field=str(path)) from exc
    return loads_strict(data, what, error)


@dataclass(frozen=True)
class Require:
    """Structure checks over a parsed JSON document, each raising `error` naming the field.

    A reader binds its own error class once (`_require = Require(VoteParseError)`) and calls
    `_require(cond, message, field, got, expected)`, `_require.keys(...)`, `_require.uint(...)`.
    """

    error: type[ParseError] = ParseError

    def __call__(self, cond: bool, message: str, field: str, got: Any = None, expected: Any = None) -> None:
        if not cond:
            raise self.error(message, field=field, got=got, expected=expected)

    def keys(self, obj: Any, field: str, required: Set[str], optional: Set[str] = frozenset()) -> dict[str, Any]:
        """`obj` as a JSON object with every `required` key and no key outside `required | optional`."""
        self(isinstance(obj, dict), "must be a JSON object", field, type(obj).__name__)
        missing, extra = set(required) - set(obj), set(obj) - set(required) - set(optional)
        self(not missing, "missing keys", field, sorted(missing))
        self(not extra, "unexpected keys", field, sorted(extra))
        return obj

    def uint(self, value: Any, field: str) -> int:
        """`value` as an integer in 0..2**63-1 (a bool is not an integer here)."""
        self(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63,
             "must be a non-negative integer", field, value)
        return value
