"""RFC 9162 Merkle tree hashing, proofs and proof verification.

Leaf hash = SHA-256(0x00 ‖ data), node hash = SHA-256(0x01 ‖ left ‖ right), the root of the
empty tree = SHA-256(""). The proof builders take the list of leaf hashes; the same algorithms
run over any `range_hash(lo, hi)` function (the transparency log passes a cached one), so the
log and the vectors exercise one implementation. Verification raises `LogProofError`
(exit code 13) naming what did not hold; it never returns a boolean.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ..errors import VerificationError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

RangeHash = Callable[[int, int], bytes]


class LogProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not hold (log layer, exit code 13)."""

    exit_code = 13


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def list_range_hash(leaf_hashes: Sequence[bytes]) -> RangeHash:
    """A `range_hash(lo, hi)` over an in-memory list of leaf hashes (MTH of D[lo:hi])."""

    def mth(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return leaf_hashes[lo]
        k = split_point(n)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    return mth


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]): the root of the tree over the given leaf hashes."""
    if not leaf_hashes:
        return EMPTY_ROOT
    # Iterative fold: combine pairs level by level; an odd node is carried up unchanged,
    # which yields the same tree as RFC 9162's largest-power-of-two split.
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(index: int, size: int, range_hash: RangeHash) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]) over any range-hash function."""
    _check_index(index, size)
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = split_point(hi - lo)
        if m < k:
            path.append(range_hash(lo + k, hi))
            hi = lo + k
        else:
            path.append(range_hash(lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, range_hash: RangeHash) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old_size, D[new_size]); empty when old_size is 0 or equal."""
    if not (0 <= old_size <= new_size):
        raise LogProofError("consistency proof sizes out of order", field="old_size",
                            got=old_size, expected=f"0 <= old_size <= {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            proof.append(range_hash(lo + k, hi))
            hi = lo + k
        else:
            proof.append(range_hash(lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(range_hash(lo, hi))
    proof.reverse()
    return proof


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Audit path for leaf `index` in the tree over all of `leaf_hashes`."""
    return inclusion_path(index, len(leaf_hashes), list_range_hash(leaf_hashes))


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Consistency proof from the tree of the first `old_size` leaves to the whole list."""
    return consistency_path(old_size, len(leaf_hashes), list_range_hash(leaf_hashes))


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: check that `leaf` (a leaf hash) is at `index` in the tree `root` of `size`."""
    _check_int("index", index)
    _check_int("size", size)
    _check_hash("leaf_hash", leaf)
    _check_hash("root", root)
    proof = _check_proof(proof)
    if index >= size:
        raise LogProofError("leaf index is outside the tree", field="index", got=index,
                            expected=f"< {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise LogProofError("inclusion proof is longer than the tree is deep", field="proof",
                                got=len(proof))
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LogProofError("inclusion proof is shorter than the tree is deep", field="proof",
                            got=len(proof))
    if r != root:
        raise LogProofError("inclusion proof does not lead to the root", field="root",
                            got=r.hex(), expected=root.hex())


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: check that the tree (`new_size`, `new_root`) extends (`old_size`, `old_root`)."""
    _check_int("old_size", old_size)
    _check_int("new_size", new_size)
    proof = _check_proof(proof)
    if not isinstance(old_root, bytes | bytearray) or not isinstance(new_root, bytes | bytearray):
        raise LogProofError("roots must be bytes", field="root")
    if old_size > new_size:
        raise LogProofError("old tree is larger than the new tree", field="old_size",
                            got=old_size, expected=f"<= {new_size}")
    if old_size == new_size:
        _check_same_tree(old_size, old_root, new_root, proof)
        return
    if old_size == 0:
        raise LogProofError("a consistency proof from the empty tree proves nothing", field="old_size",
                            got=0, expected="> 0")
    _check_hash("old_root", old_root)
    _check_hash("new_root", new_root)
    if not proof:
        raise LogProofError("consistency proof is empty", field="proof", got=0, expected="> 0")
    fr, sr = _consistency_roots(old_size, new_size, bytes(old_root), proof)
    if fr != old_root:
        raise LogProofError("consistency proof does not reproduce the old root", field="old_root",
                            got=fr.hex(), expected=bytes(old_root).hex())
    if sr != new_root:
        raise LogProofError("consistency proof does not reproduce the new root", field="new_root",
                            got=sr.hex(), expected=bytes(new_root).hex())


def _check_same_tree(size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Equal sizes: an empty proof and the same root (the empty tree's root for size 0)."""
    if proof:
        raise LogProofError("equal tree sizes need an empty proof", field="proof", got=len(proof), expected=0)
    if size == 0 and old_root != EMPTY_ROOT:
        raise LogProofError("root of the empty tree must be SHA-256('')", field="old_root",
                            got=bytes(old_root).hex(), expected=EMPTY_ROOT.hex())
    if old_root != new_root:
        raise LogProofError("equal tree sizes with different roots", field="new_root",
                            got=bytes(new_root).hex(), expected=bytes(old_root).hex())


def _consistency_roots(old_size: int, new_size: int, old_root: bytes,
                       proof: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The (old, new) roots a non-empty consistency proof reproduces (RFC 9162 §2.1.4.2 steps 1-7)."""
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LogProofError("consistency proof is too long", field="proof", got=len(proof))
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LogProofError("consistency proof is too short", field="proof", got=len(proof))
    return fr, sr


def _check_index(index: int, size: int) -> None:
    _check_int("index", index)
    _check_int("size", size)
    if index >= size:
        raise LogProofError("leaf index is outside the tree", field="index", got=index, expected=f"< {size}")


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LogProofError(f"{name} must be a non-negative integer", field=name, got=value)


def _check_hash(name: str, value: object) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        got = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise LogProofError(f"{name} must be a {HASH_SIZE}-byte hash", field=name, got=got,
                            expected=HASH_SIZE)


def _check_proof(proof: object) -> list[bytes]:
    if proof is None:
        return []
    if not isinstance(proof, list | tuple):
        raise LogProofError("proof must be a list of hashes", field="proof", got=type(proof).__name__)
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
    return [bytes(p) for p in proof]
