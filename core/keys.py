"""Node identity: one Ed25519 signing key per node under $SPECGUARD_HOME/keys/node.key.

The key is created on first use with file mode 0600 (the directory 0700) and is never
logged or printed; only its public half and key id leave this module. The file holds the
32-byte raw private key in PKCS#8 PEM so standard tools can read it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError

log = logging.getLogger("specguard.keys")

KEY_FILE = "node.key"


def home_dir() -> Path:
    """$SPECGUARD_HOME, or ~/.cache/specguard when unset."""
    raw = os.environ.get("SPECGUARD_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "specguard"


def key_id_for(public_bytes: bytes) -> str:
    """`ed25519:` + the first 16 hex digits of SHA-256(raw public key)."""
    return "ed25519:" + hashlib.sha256(public_bytes).hexdigest()[:16]


@dataclass(frozen=True)
class NodeKey:
    """A node's Ed25519 identity. `repr` never shows the private key."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_bytes(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def __repr__(self) -> str:
        return f"NodeKey(key_id={self.key_id!r})"


def load_or_create_node_key(home: Path | None = None) -> NodeKey:
    """Load the node key from `home`/keys/node.key, creating it (mode 0600) on first use."""
    keys_dir = Path(home if home is not None else home_dir()) / "keys"
    path = keys_dir / KEY_FILE
    if keys_dir.is_dir() and keys_dir.stat().st_mode & 0o077:
        try:  # mkdir's mode does not apply to a folder that already existed: tighten it
            os.chmod(keys_dir, 0o700)
        except OSError as exc:
            log.warning("cannot make %s private (0700): %s", keys_dir, exc)
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _load(path)  # another process created it first: use theirs
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        key = NodeKey(private)
        log.info("created node key %s at %s", key.key_id, path)
        return key
    return _load(path)


def _load(path: Path) -> NodeKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError("node key file is readable by others; chmod 600 it", field=str(path),
                          got=oct(mode), expected="0o600")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("node key file is not an unencrypted PKCS#8 PEM key", field=str(path)) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError("node key is not an Ed25519 key", field=str(path), got=type(private).__name__)
    return NodeKey(private)


def parse_public_key(value: str | bytes) -> bytes:
    """A raw 32-byte Ed25519 public key from raw bytes, 64 hex digits, or a PEM/file path."""
    if isinstance(value, bytes):
        if len(value) == 32:
            return value
        raise ConfigError("Ed25519 public key must be 32 bytes", got=len(value), expected=32)
    text = value.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError("public key is neither 64 hex digits nor a readable file", got=text)
    data = path.read_bytes()
    stripped = data.strip()
    if len(stripped) == 64:
        return parse_public_key(stripped.decode("ascii", "replace"))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError("public key file is not hex or a PEM public key", field=str(path)) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("public key is not Ed25519", field=str(path), got=type(key).__name__)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
