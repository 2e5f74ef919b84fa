"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed-note envelopes (Ed25519).

Checkpoint body (every line ends in LF):
    <origin>
    <tree size, decimal, no leading zeros>
    <base64 of the 32-byte RFC 9162 root hash>
    [extension lines]
Signed note = body, one empty line, then signature lines
    — <key name> <base64(key hash[4] ‖ Ed25519 signature[64])>
where the signature covers the body bytes exactly, the key name is the origin, and
key hash = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]. A verifier key is written
    <name>+<8 hex digits of key hash>+<base64(0x01 ‖ public key)>
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import ParseError
from ..keys import NodeKey
from .dsse import b64decode_strict
from .merkle import EMPTY_ROOT, HASH_SIZE, LogProofError, verify_consistency

ED25519_ALG = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class CheckpointParseError(ParseError):
    """A signed note, checkpoint body or verifier key is malformed (exit code 3)."""


class CheckpointSignatureError(LogProofError):
    """No trusted key signed the checkpoint, or a signature by a trusted key is invalid (exit 13)."""


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint body."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def body(self) -> str:
        return format_checkpoint(self.origin, self.size, self.root, self.extensions)


def key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte signed-note key hash of an Ed25519 key."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519_ALG]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The signed-note verifier key string `<name>+<hex keyhash>+<base64(0x01 ‖ pubkey)>`."""
    _check_name(name)
    return f"{name}+{key_hash(name, public_key).hex()}+" + base64.b64encode(
        bytes([ED25519_ALG]) + public_key).decode("ascii")


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """Parse a verifier key string; return (name, raw 32-byte public key)."""
    if not isinstance(text, str):
        raise CheckpointParseError("verifier key must be a string", field="verifier_key")
    parts = text.strip().split("+")
    if len(parts) != 3:
        raise CheckpointParseError("verifier key must be name+hash+key", field="verifier_key", got=text)
    name, hash_hex, key_b64 = parts
    _check_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
        raise CheckpointParseError("verifier key hash must be 8 lowercase hex digits",
                                   field="verifier_key.hash", got=hash_hex)
    raw = b64decode_strict(key_b64, "verifier_key.key", CheckpointParseError)
    if len(raw) != 33 or raw[0] != ED25519_ALG:
        raise CheckpointParseError("verifier key must be 0x01 followed by a 32-byte Ed25519 key",
                                   field="verifier_key.key", got=raw[:1].hex(), expected="01 + 32 bytes")
    public_key = raw[1:]
    if key_hash(name, public_key).hex() != hash_hex:
        raise CheckpointParseError("verifier key hash does not match its name and key",
                                   field="verifier_key.hash", got=hash_hex,
                                   expected=key_hash(name, public_key).hex())
    return name, public_key


def format_checkpoint(origin: str, size: int, root: bytes, extensions: tuple[str, ...] = ()) -> str:
    """The checkpoint body text."""
    _check_name(origin, what="origin")
    if len(root) != HASH_SIZE:
        raise CheckpointParseError("root must be 32 bytes", field="root", got=len(root))
    lines = [origin, str(int(size)), base64.b64encode(root).decode("ascii"), *extensions]
    return "".join(line + "\n" for line in lines)


def sign_note(text: str, name: str, key: NodeKey) -> str:
    """Append an Ed25519 signature line by `name` to the note `text` (which ends in LF)."""
    _check_text(text)
    _check_name(name)
    sig = key.sign(text.encode("utf-8"))
    line = SIG_PREFIX + name + " " + base64.b64encode(key_hash(name, key.public_bytes) + sig).decode("ascii")
    return text + "\n" + line + "\n"


def sign_checkpoint(origin: str, size: int, root: bytes, key: NodeKey) -> str:
    """A signed checkpoint note, signed under the key name `origin`."""
    return sign_note(format_checkpoint(origin, size, root), origin, key)


def split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and (name, key hash, signature) triples, unverified."""
    note = _note_text(note)
    cut = note.rfind("\n\n")
    if cut < 0:
        raise CheckpointParseError("signed note has no blank line before its signatures", field="note")
    text, block = note[: cut + 1], note[cut + 2:]
    _check_text(text)
    if not block.endswith("\n"):
        raise CheckpointParseError("signature block must end with a newline", field="note.signatures")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointParseError("too many signatures", field="note.signatures", got=len(lines))
    return text, [_signature_line(line, f"note.signatures[{i}]") for i, line in enumerate(lines)]


def _note_text(note: str | bytes) -> str:
    """The note as text of at most MAX_NOTE_BYTES (bytes must be UTF-8)."""
    if isinstance(note, bytes | bytearray):
        if len(note) > MAX_NOTE_BYTES:
            raise CheckpointParseError("signed note is too large", field="note", got=len(note))
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointParseError("signed note is not UTF-8", field="note", offset=exc.start) from exc
    if not isinstance(note, str):
        raise CheckpointParseError("signed note must be text", field="note", got=type(note).__name__)
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointParseError("signed note is too large", field="note", got=len(note))
    return note


def _signature_line(line: str, field_name: str) -> tuple[str, bytes, bytes]:
    """(name, key hash, signature) of one '— name base64(key hash ‖ signature)' line."""
    if not line.startswith(SIG_PREFIX):
        raise CheckpointParseError("signature line must start with an em dash and a space",
                                   field=field_name, got=line[:40])
    parts = line[len(SIG_PREFIX):].split(" ")
    if len(parts) != 2:
        raise CheckpointParseError("signature line must be '— name signature'", field=field_name,
                                   got=line[:60])
    name, sig_b64 = parts
    _check_name(name)
    raw = b64decode_strict(sig_b64, field_name, CheckpointParseError)
    if len(raw) < 5:
        raise CheckpointParseError("signature is too short", field=field_name, got=len(raw))
    return name, raw[:4], raw[4:]


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text, without signatures)."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointParseError("checkpoint needs origin, size and root lines", field="checkpoint",
                                   got=len(lines), expected=">= 3")
    origin, size_s, root_s, *ext = lines
    _check_name(origin, what="origin")
    if not _DECIMAL.fullmatch(size_s) or int(size_s) >= 2**63:
        raise CheckpointParseError("tree size must be a decimal integer without leading zeros",
                                   field="checkpoint.size", got=size_s)
    root = b64decode_strict(root_s, "checkpoint.root", CheckpointParseError)
    if len(root) != HASH_SIZE:
        raise CheckpointParseError("root hash must be 32 bytes", field="checkpoint.root", got=len(root))
    for i, line in enumerate(ext):
        if not line:
            raise CheckpointParseError("empty extension line", field=f"checkpoint.extension[{i}]")
    return Checkpoint(origin, int(size_s), root, tuple(ext))


def verify_note(note: str | bytes, verifiers: list[tuple[str, bytes]]) -> str:
    """Verify a signed note against (key name, Ed25519 public key) pairs; return its text.

    Signatures by unknown keys are ignored (e.g. witness cosignatures); a signature that claims
    a known key (same name and key hash) but does not verify fails the whole note.
    """
    text, sigs = split_note(note)
    if not verifiers:
        raise CheckpointSignatureError("no public key to verify the note with", field="trusted_keys")
    known = {(name, key_hash(name, pk)): pk for name, pk in verifiers}
    message = text.encode("utf-8")
    verified = False
    for i, (name, khash, sig) in enumerate(sigs):
        pk = known.get((name, khash))
        if pk is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(pk).verify(sig, message)
        except (InvalidSignature, ValueError) as exc:
            raise CheckpointSignatureError("note signature does not verify", field=f"note.signatures[{i}]",
                                           got=name) from exc
        verified = True
    if not verified:
        raise CheckpointSignatureError("note is not signed by a trusted key", field="note.signatures",
                                       got=[s[0] for s in sigs],
                                       expected=[verifier_key(n, pk) for n, pk in verifiers])
    return text


def verify_checkpoint(note: str | bytes, public_keys: list[bytes], origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint against trusted Ed25519 keys; return the parsed checkpoint.

    The signature must be under the key name equal to the checkpoint's origin (and to `origin`
    when given).
    """
    text, _ = split_note(note)
    cp = parse_checkpoint(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointSignatureError("checkpoint origin differs", field="checkpoint.origin",
                                       got=cp.origin, expected=origin)
    verify_note(note, [(cp.origin, pk) for pk in public_keys])
    return cp


def check_consistency(old: Checkpoint, new: Checkpoint, proof: list[bytes] | tuple[bytes, ...] | None) -> str:
    """Check that checkpoint `new` extends checkpoint `old` (both already signature-verified).

    Same size: the roots must be equal (else a split view). `old` larger: a rollback. `old` of
    size 0: consistent with any later tree (RFC 9162 §2.1.4: the empty tree is a prefix of every
    tree), provided its root is SHA-256("") and no proof is given. Otherwise `proof` must be an
    RFC 9162 consistency proof between the two sizes. Raises LogProofError; returns a detail line.
    """
    if old.origin != new.origin:
        raise CheckpointSignatureError("checkpoints of two different logs", field="checkpoint.origin",
                                       got=new.origin, expected=old.origin)
    if old.size > new.size:
        raise LogProofError("log is smaller than a checkpoint it signed earlier (rollback)",
                            field="tree_size", got=new.size, expected=f">= {old.size}")
    if old.size == new.size:
        if old.root != new.root:
            raise LogProofError("two checkpoints of the same size disagree (split view)", field="checkpoint.root",
                                got=new.root.hex(), expected=old.root.hex())
        return f"equal to the checkpoint of size {old.size}"
    if old.size == 0:
        if old.root != EMPTY_ROOT:
            raise LogProofError("a checkpoint of the empty log must have the root SHA-256('')",
                                field="checkpoint.root", got=old.root.hex(), expected=EMPTY_ROOT.hex())
        if proof:
            raise LogProofError("the consistency proof from the empty tree is empty", field="consistency_proof",
                                got=len(proof), expected=0)
        return f"extends the empty checkpoint (size 0 -> {new.size})"
    if proof is None:
        raise LogProofError("checkpoint sizes differ and no consistency proof was given", field="consistency_proof",
                            got=None, expected=f"proof between sizes {old.size} and {new.size}")
    verify_consistency(old.size, new.size, old.root, new.root, list(proof))
    return f"consistent with the checkpoint of size {old.size} (now {new.size})"


def _check_text(text: object) -> None:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise CheckpointParseError("note text must end with a newline", field="note.text")
    for i, ch in enumerate(text):
        if (ord(ch) < 0x20 and ch != "\n") or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            raise CheckpointParseError("note text contains a control character", field="note.text",
                                       offset=i, got=hex(ord(ch)))


def _check_name(name: object, what: str = "key name") -> None:
    """Key names (and so our origins, which double as key names) have no spaces or '+'."""
    if not isinstance(name, str) or not name:
        raise CheckpointParseError(f"{what} must be a non-empty string", field=what, got=name)
    if any(c.isspace() or c == "+" or ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        raise CheckpointParseError(f"{what} contains forbidden characters", field=what, got=name)
