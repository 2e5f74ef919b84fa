"""C2SP signed notes and tlog checkpoints: Go sumdb/note vector, round trips, tampering, fuzzing."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from specguard.attest import checkpoint as ckpt
from specguard.attest.checkpoint import CheckpointParseError, CheckpointSignatureError
from specguard.attest.merkle import leaf_hash
from specguard.errors import SpecguardError
from specguard.keys import NodeKey

# golang.org/x/mod/sumdb/note (note.go package example and note_test.go): a published key pair
# and a signed note that any C2SP signed-note implementation must reproduce byte for byte.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
           "dngotpRZb6KE6RyyBwJnAM=\n")


def _go_key() -> NodeKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 1 and len(seed) == 33
    return NodeKey(Ed25519PrivateKey.from_private_bytes(seed[1:]))


def _key(n: int) -> NodeKey:
    return NodeKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


def test_go_verifier_key_parses_and_round_trips() -> None:
    name, pub = ckpt.parse_verifier_key(GO_VKEY)
    assert name == "PeterNeumann"
    assert ckpt.key_hash(name, pub).hex() == "c74f20a3"
    assert ckpt.verifier_key(name, pub) == GO_VKEY
    assert _go_key().public_bytes == pub


def test_go_note_is_reproduced_byte_for_byte_and_verifies() -> None:
    assert ckpt.sign_note(GO_TEXT, "PeterNeumann", _go_key()) == GO_NOTE
    name, pub = ckpt.parse_verifier_key(GO_VKEY)
    assert ckpt.verify_note(GO_NOTE, [(name, pub)]) == GO_TEXT
    with pytest.raises(CheckpointSignatureError, match="does not verify"):
        ckpt.verify_note(GO_NOTE.replace("cryptography", "cryptographY"), [(name, pub)])


def test_every_mangled_verifier_key_is_rejected() -> None:
    raw = GO_VKEY.encode()
    for i in range(len(raw)):
        mangled = bytearray(raw)
        mangled[i] = (mangled[i] + 1) % 128
        with pytest.raises(CheckpointParseError):
            ckpt.parse_verifier_key(mangled.decode("ascii"))


def test_checkpoint_round_trip() -> None:
    key = _key(7)
    root = leaf_hash(b"x")
    note = ckpt.sign_checkpoint("example.com/log", 12, root, key)
    body = "example.com/log\n12\n" + base64.b64encode(root).decode() + "\n"
    assert note.startswith(body + "\n\u2014 example.com/log ")
    cp = ckpt.verify_checkpoint(note, [key.public_bytes], origin="example.com/log")
    assert (cp.origin, cp.size, cp.root, cp.extensions) == ("example.com/log", 12, root, ())
    assert cp.body() == body
    # the signature line is base64(key hash ‖ signature) with the documented key hash
    sig = base64.b64decode(note.rsplit(" ", 1)[1])
    assert sig[:4] == ckpt.key_hash("example.com/log", key.public_bytes) and len(sig) == 68


def test_every_byte_flip_of_a_signed_checkpoint_fails() -> None:
    key = _key(9)
    note = ckpt.sign_checkpoint("specguard/node-test", 5, leaf_hash(b"r"), key).encode()
    for i in range(len(note)):
        for mask in (0x01, 0x20):
            bad = bytearray(note)
            bad[i] ^= mask
            with pytest.raises((CheckpointParseError, CheckpointSignatureError)) as err:
                ckpt.verify_checkpoint(bytes(bad), [key.public_bytes])
            assert err.value.field


def test_wrong_key_origin_and_unknown_signers() -> None:
    key, other = _key(1), _key(2)
    note = ckpt.sign_checkpoint("log.example", 3, leaf_hash(b"a"), key)
    with pytest.raises(CheckpointSignatureError, match="not signed by a trusted key"):
        ckpt.verify_checkpoint(note, [other.public_bytes])
    with pytest.raises(CheckpointSignatureError, match="origin differs"):
        ckpt.verify_checkpoint(note, [key.public_bytes], origin="other.example")
    with pytest.raises(CheckpointSignatureError, match="no public key"):
        ckpt.verify_checkpoint(note, [])
    # a cosignature by an unknown witness is ignored; the log's own signature still verifies
    cosigned = ckpt.sign_note(note.split("\n\n")[0] + "\n", "witness.example", other)
    both = note + cosigned.split("\n\n")[1]
    assert ckpt.verify_checkpoint(both, [key.public_bytes]).size == 3
    # signed by the right key under a different name does not count
    renamed = ckpt.sign_note(note.split("\n\n")[0] + "\n", "not-the-origin", key)
    with pytest.raises(CheckpointSignatureError):
        ckpt.verify_checkpoint(renamed, [key.public_bytes])


@pytest.mark.parametrize("body,field", [
    ("o\n012\n" + base64.b64encode(bytes(32)).decode() + "\n", "checkpoint.size"),
    ("o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n", "checkpoint.size"),
    ("o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n", "checkpoint.root"),
    ("o\n1\nnot base64!\n", "checkpoint.root"),
    ("o\n1\n", "checkpoint"),
    ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "checkpoint.extension[0]"),
    ("o o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "origin"),
    ("o\n1\n" + base64.b64encode(bytes(32)).decode(), "note.text"),
    ("o\t\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "note.text"),
])
def test_malformed_checkpoint_bodies(body: str, field: str) -> None:
    with pytest.raises(CheckpointParseError) as err:
        ckpt.parse_checkpoint(body)
    assert err.value.field == field


def test_extensions_are_kept() -> None:
    body = "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\nTimestamp: 1\n"
    assert ckpt.parse_checkpoint(body).extensions == ("Timestamp: 1",)


@settings(deadline=None, max_examples=300, derandomize=True)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    key = _key(3)
    try:
        ckpt.verify_checkpoint(data, [key.public_bytes])
    except SpecguardError as exc:
        assert isinstance(exc, CheckpointParseError | CheckpointSignatureError)
    else:
        raise AssertionError("random bytes verified as a checkpoint")


@settings(deadline=None, max_examples=200, derandomize=True)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_parse_errors(text: str) -> None:
    for fn in (ckpt.split_note, ckpt.parse_checkpoint, ckpt.parse_verifier_key):
        try:
            result = fn(text)
        except CheckpointParseError as exc:
            assert exc.field
        else:
            assert isinstance(result, tuple | ckpt.Checkpoint)
