"""Public keys given by users on the command line or in policies: hex, signed-note verifier keys, or files."""

from __future__ import annotations

from pathlib import Path

from .attest.checkpoint import parse_verifier_key
from .keys import parse_public_key


def parse_key_arg(value: str) -> bytes:
    """A raw Ed25519 public key from 64 hex digits, a signed-note verifier key, or a file of either/PEM."""
    text = value.strip()
    path = Path(text).expanduser()
    if "+" in text and not path.is_file():
        return parse_verifier_key(text)[1]
    if path.is_file():
        content = path.read_text("utf-8", "replace").strip()
        if "+" in content and "BEGIN" not in content:
            return parse_verifier_key(content)[1]
    return parse_public_key(text)
