"""Disclosures take their tree size from the verified receipt; an empty checkpoint is consistent
with every later one (issue 11 §7).

Attackers: a node disclosing token records (it controls the disclosure document, not the signed
receipt) that wants a record to appear at another index; and, for checkpoints, an auditor's
tooling that must not reject an honest log only because the first checkpoint saved was empty
(while a forged "empty" checkpoint must still fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.receipt_factory import Issuer, run_cli, transcript, write_json

from specguard.attest import merkle
from specguard.attest.checkpoint import Checkpoint, check_consistency, sign_checkpoint
from specguard.attest.disclosure import DisclosureError, disclose, token_record_leaf, verify_disclosure
from specguard.attest.options import VerifyOptions
from specguard.attest.receipts import verify_receipt
from specguard.attest.tlog import TransparencyLog
from specguard.keys import load_or_create_node_key


@pytest.fixture()
def issuer(tmp_path: Path):
    iss = Issuer(tmp_path / "node")
    yield iss
    iss.close()


def _forged_disclosure(t) -> dict:
    """Record 2 of a 3-leaf tree "proven" at index 1 of a claimed 2-leaf tree: the sibling is the
    hash of the subtree (0, 1), so the proof recomputes the real root."""
    honest = disclose(t, [2])
    leaves = [merkle.leaf_hash(token_record_leaf(tok)) for tok in t.tokens]
    subtree = merkle.node_hash(leaves[0], leaves[1])
    forged = dict(honest, tree_size=2)
    forged["records"] = [{"index": 1, "record": honest["records"][0]["record"], "proof": [subtree.hex()]}]
    # the forgery is a valid RFC 9162 inclusion proof for the size it claims: only the size gives it away
    merkle.verify_inclusion(1, 2, leaves[2], [subtree], bytes.fromhex(honest["root"]))
    return forged


def test_disclosure_tree_size_comes_from_the_receipt(issuer, tmp_path, capsys):
    t = transcript([10, 11, 12])
    receipt = write_json(tmp_path / "r.json", issuer.issue(t=t))
    pin = ["--trusted-key", issuer.key.public_hex]
    forged = _forged_disclosure(t)
    with pytest.raises(DisclosureError) as err:
        verify_disclosure(forged, forged["root"], 3)
    assert err.value.field == "tree_size" and err.value.got == 2 and err.value.expected == 3
    # through the CLI, the receipt (verified: pinned key, log) gives root and size
    code, _, stderr = run_cli(["commit", "verify-disclosure", "--disclosure", write_json(tmp_path / "f.json", forged),
                               "--receipt", receipt, *pin], capsys)
    assert code == 4 and "another tree size" in stderr
    # the honest disclosure verifies, at its real index
    code, _, stderr = run_cli(["commit", "verify-disclosure", "--disclosure",
                               write_json(tmp_path / "d.json", disclose(t, [2])), "--receipt", receipt, *pin], capsys)
    assert code == 0, stderr
    # with --root and --tree-size taken from the receipt by hand, the same forgery fails
    code, _, _ = run_cli(["commit", "verify-disclosure", "--disclosure", write_json(tmp_path / "f.json", forged),
                          "--root", forged["root"], "--tree-size", "3"], capsys)
    assert code == 4
    # --root alone (a size taken from nowhere) is refused
    code, _, stderr = run_cli(["commit", "verify-disclosure", "--disclosure", str(tmp_path / "d.json"),
                               "--root", forged["root"]], capsys)
    assert code == 2 and "--tree-size" in stderr


def test_disclosure_receipt_needs_a_pinned_key(issuer, tmp_path, capsys):
    t = transcript([10, 11, 12])
    receipt = write_json(tmp_path / "r.json", issuer.issue(t=t))
    doc = write_json(tmp_path / "d.json", disclose(t, [0]))
    code, _, _ = run_cli(["commit", "verify-disclosure", "--disclosure", doc, "--receipt", receipt], capsys)
    assert code == 10
    other = load_or_create_node_key(tmp_path / "other")
    code, _, _ = run_cli(["commit", "verify-disclosure", "--disclosure", doc, "--receipt", receipt,
                          "--trusted-key", other.public_hex], capsys)
    assert code == 10


def test_empty_checkpoint_is_consistent_with_any_later_one(tmp_path, capsys):
    key = load_or_create_node_key(tmp_path / "node")
    db = tmp_path / "log.sqlite3"
    log = TransparencyLog(db, "specguard/test-log", key)
    try:
        empty = log.checkpoint()
        saved = tmp_path / "empty.cp"
        saved.write_text(empty, "utf-8")
        for i in range(5):
            log.append(f"entry {i}".encode())
    finally:
        log.close()
    code, out, stderr = run_cli(["log", "verify", "--db", str(db), "--key", key.public_hex, "--checkpoint",
                                 str(saved), "--json"], capsys)
    assert code == 0, stderr
    assert "consistent with saved checkpoint of size 0" in out["checks"]
    # a forged "empty" checkpoint (size 0 but another root), validly signed, is not consistent
    forged = tmp_path / "forged.cp"
    forged.write_text(sign_checkpoint("specguard/test-log", 0, b"\x01" * 32, key), "utf-8")
    code, out, _ = run_cli(["log", "verify", "--db", str(db), "--key", key.public_hex, "--checkpoint",
                            str(forged), "--json"], capsys)
    assert code == 13 and out["error"] == "LogProofError" and out["field"] == "checkpoint.root"


def test_receipt_against_a_saved_empty_checkpoint(issuer, tmp_path):
    empty = issuer.checkpoint()  # nothing issued yet
    doc = issuer.issue()
    verified = verify_receipt(doc, VerifyOptions(trusted_keys=(issuer.key.public_bytes,), checkpoint=empty))
    layer = next(x for x in verified.layers if x["layer"] == "log_consistency")
    assert layer["status"] == "ok" and "empty" in layer["detail"]


def test_check_consistency_rules():
    root3 = merkle.root_hash([merkle.leaf_hash(bytes([i])) for i in range(3)])
    empty = Checkpoint("o", 0, merkle.EMPTY_ROOT)
    later = Checkpoint("o", 3, root3)
    assert "empty" in check_consistency(empty, later, None)
    with pytest.raises(merkle.LogProofError, match="empty"):
        check_consistency(empty, later, [b"\x00" * 32])  # the proof from the empty tree is empty
    with pytest.raises(merkle.LogProofError, match="rollback"):
        check_consistency(later, empty, None)
    with pytest.raises(merkle.LogProofError, match="split view"):
        check_consistency(Checkpoint("o", 3, b"\x02" * 32), later, None)
    with pytest.raises(merkle.LogProofError, match="no consistency proof"):
        check_consistency(Checkpoint("o", 1, merkle.leaf_hash(b"\x00")), later, None)
    with pytest.raises(merkle.LogProofError):
        check_consistency(Checkpoint("other", 0, merkle.EMPTY_ROOT), later, None)
    assert json.dumps(later.body())
