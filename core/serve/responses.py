"""The response store: the exact bodies receipts were issued for, readable only by their requester."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any


class ResponseStore:
    """The exact response bodies receipts were issued for, by receipt id (for streamed responses,
    whose client never sees the assembled body), readable only by whoever made the request.

    Each body is stored with the SHA-256 of a per-response secret (`new_token()`, 32 random
    bytes) that only the requester received; `get` needs that secret and compares digests in
    constant time. Files live under `home`/responses/ (folders 0700, files 0600), written
    atomically. Bodies stored without a token digest (older versions) are never served.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    @staticmethod
    def new_token() -> str:
        """A fresh per-response secret: 32 random bytes, URL-safe base64."""
        return secrets.token_urlsafe(32)

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def _path(self, receipt_id: str) -> Path | None:
        if not isinstance(receipt_id, str) or not re.fullmatch(r"[0-9a-f]{32}", receipt_id):
            return None
        return self.root / receipt_id[:2] / f"{receipt_id}.json"

    def put(self, receipt_id: str, response_obj: dict[str, Any], token: str) -> None:
        """Store `response_obj` readable with `token` only."""
        path = self._path(receipt_id)
        if path is None:
            raise ValueError(f"bad receipt id {receipt_id!r}")
        if not isinstance(token, str) or len(token) < 32:
            raise ValueError("a response token must be at least 32 characters")
        path.parent.mkdir(exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        data = json.dumps({"token_sha256": self._digest(token), "response": response_obj}, ensure_ascii=False)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def get(self, receipt_id: str, token: str | None) -> dict[str, Any] | None:
        """The stored body if `token` is its secret; None for an unknown id or a wrong/missing token
        (the same answer, so a reader without the secret learns nothing)."""
        path = self._path(receipt_id)
        if path is None or not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        want = doc.get("token_sha256") if isinstance(doc, dict) else None
        if not isinstance(want, str) or not isinstance(token, str):
            return None
        if not hmac.compare_digest(self._digest(token).encode(), want.encode()):
            return None
        body = doc.get("response")
        return body if isinstance(body, dict) else None


__all__ = ["ResponseStore"]
