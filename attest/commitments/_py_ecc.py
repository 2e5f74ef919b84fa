"""py_ecc, imported without its side effect on the interpreter.

py_ecc raises the interpreter's recursion limit to 100000 when imported. With that limit a
deeply nested JSON document (from a client, a provider or a hostile drafter) makes the C JSON
decoder overflow the C stack and kill the whole process instead of raising RecursionError.
specguard never uses py_ecc's recursive `multiply` on untrusted scalars, so the limit is put back.
"""

from __future__ import annotations

import sys

_limit = sys.getrecursionlimit()
try:
    from py_ecc.bls.hash_to_curve import hash_to_G1
    from py_ecc.optimized_bls12_381 import G1, curve_order, field_modulus
finally:
    sys.setrecursionlimit(_limit)

__all__ = ["G1", "curve_order", "field_modulus", "hash_to_G1"]
