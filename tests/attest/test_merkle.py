"""RFC 9162 Merkle proofs against every transparency-dev/merkle vector in ../shared/vectors/merkle."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import SHARED

from specguard.attest import merkle
from specguard.attest.merkle import LogProofError

VECTORS = SHARED / "vectors" / "merkle"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _proof(values: list[str] | None) -> list[bytes]:
    return [_b64(v) for v in (values or [])]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(VECTORS)) for p in paths]


def test_vector_sets_are_present() -> None:
    assert len(INCLUSION) >= 80
    assert len(CONSISTENCY) >= 90


@pytest.mark.parametrize("path", INCLUSION, ids=_ids(INCLUSION))
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), _proof(case["proof"]), _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(LogProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_ids(CONSISTENCY))
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), _proof(case["proof"]))
    if case["wantErr"]:
        with pytest.raises(LogProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def _reference_mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 MTH written literally (recursive split), to cross-check the iterative root."""
    if not hashes:
        return merkle.EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = merkle.split_point(len(hashes))
    return merkle.node_hash(_reference_mth(hashes[:k]), _reference_mth(hashes[k:]))


def test_known_roots() -> None:
    # The inclusion happy-path vectors use leaves 0..7 of the transparency-dev test tree.
    assert merkle.root_hash([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    case = json.loads((VECTORS / "inclusion" / "1" / "happy-path.json").read_text())
    assert merkle.verify_inclusion(case["leafIdx"], case["treeSize"], _b64(case["leafHash"]),
                                   _proof(case["proof"]), _b64(case["root"])) is None


@settings(deadline=None, max_examples=60, derandomize=True)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_generated_proofs_verify(n: int, data: st.DataObject) -> None:
    hashes = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    root = merkle.root_hash(hashes)
    assert root == _reference_mth(hashes)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    merkle.verify_inclusion(index, n, hashes[index], merkle.inclusion_proof(index, hashes), root)
    old = data.draw(st.integers(min_value=1, max_value=n))
    old_root = merkle.root_hash(hashes[:old])
    merkle.verify_consistency(old, n, old_root, root, merkle.consistency_proof(old, hashes))
    if old < n:
        with pytest.raises(LogProofError):
            merkle.verify_consistency(old, n, merkle.leaf_hash(b"other"), root,
                                      merkle.consistency_proof(old, hashes))


def test_rejects_wrong_types() -> None:
    h = merkle.leaf_hash(b"a")
    with pytest.raises(LogProofError, match="index"):
        merkle.verify_inclusion(-1, 1, h, [], h)
    with pytest.raises(LogProofError, match="proof"):
        merkle.verify_inclusion(0, 2, h, "notalist", h)  # type: ignore[arg-type]
    with pytest.raises(LogProofError, match="leaf index is outside"):
        merkle.inclusion_proof(3, [h, h])
