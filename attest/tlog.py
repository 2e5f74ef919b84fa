"""An append-only RFC 9162 Merkle log in SQLite, with signed checkpoints.

Storage: one SQLite file in WAL mode with synchronous=FULL, so `append` returns only after the
new leaf (and the receipt stored with it) has been fsynced; a process killed at any moment
leaves a log that reopens with every acknowledged entry. Tables:
    meta(key, value)                          origin and format version
    leaves(idx, leaf_hash, data)              leaf data = canonical JSON of a DSSE envelope
    receipts(receipt_id, idx, document)       the receipt document issued for leaf idx
In memory the log keeps every leaf hash and every perfect-subtree hash (about two hashes per
leaf), so roots and proofs for any size cost O(log n) hashes. One process writes a log file at a
time; a writer notices entries another process appended and reloads before appending.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RequestError
from ..keys import NodeKey
from . import merkle
from .checkpoint import sign_checkpoint

FORMAT_VERSION = "1"
LOG_FILE = "log.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (
    idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    receipt_id TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE, document BLOB NOT NULL);
"""


class LogRangeError(RequestError):
    """An index or tree size outside the log, or a malformed log query (exit code 2, HTTP 400/404)."""


class LogCorruptError(ConfigError):
    """The log file does not hold a contiguous, hash-consistent sequence of leaves."""


@dataclass(frozen=True)
class Appended:
    """What `append` durably wrote: the leaf's index and the tree that first contains it."""

    index: int
    tree_size: int
    root: bytes
    inclusion_proof: list[bytes]
    checkpoint: str


class TransparencyLog:
    """The node's Merkle log. Thread-safe; `key` is needed only to sign checkpoints."""

    def __init__(self, path: Path, origin: str, key: NodeKey | None = None) -> None:
        self.path = Path(path)
        self.origin = origin
        self._key = key
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._init_meta()
        self._levels: list[list[bytes]] = [[]]
        self._cp_cache: tuple[int, str] | None = None
        self._reload()

    # --- state ------------------------------------------------------------------------------

    def _init_meta(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                self._db.execute("INSERT INTO meta VALUES ('origin', ?), ('format', ?)",
                                 (self.origin, FORMAT_VERSION))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if rows and rows.get("origin") != self.origin:
            raise ConfigError("log file belongs to another origin", field=str(self.path),
                              got=rows.get("origin"), expected=self.origin)
        if rows and rows.get("format") != FORMAT_VERSION:
            raise ConfigError("unsupported log format", field=str(self.path), got=rows.get("format"),
                              expected=FORMAT_VERSION)

    def _reload(self) -> None:
        """Load every leaf hash (from the current size on) and extend the subtree cache."""
        start = len(self._levels[0])
        for idx, h in self._db.execute("SELECT idx, leaf_hash FROM leaves WHERE idx >= ? ORDER BY idx",
                                       (start,)):
            if idx != len(self._levels[0]) or not isinstance(h, bytes) or len(h) != merkle.HASH_SIZE:
                raise LogCorruptError("log leaves are not contiguous 32-byte hashes", field="leaves.idx",
                                      got=idx, expected=len(self._levels[0]))
            self._push(h)

    def _push(self, h: bytes) -> None:
        levels = self._levels
        levels[0].append(h)
        level = 0
        while len(levels[level]) % 2 == 0:
            pair = levels[level][-2:]
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(merkle.node_hash(pair[0], pair[1]))
            level += 1

    def _pop(self) -> None:
        self._levels[0].pop()
        n = len(self._levels[0])
        for level in range(1, len(self._levels)):
            while len(self._levels[level]) > n >> level:
                self._levels[level].pop()

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def _range_hash(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return merkle.EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            return self._levels[n.bit_length() - 1][lo // n]
        k = merkle.split_point(n)
        return merkle.node_hash(self._range_hash(lo, lo + k), self._range_hash(lo + k, hi))

    def _check_size(self, size: int | None, name: str = "size") -> int:
        if size is None:
            return self.size
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= self.size:
            raise LogRangeError("tree size outside the log", field=name, got=size,
                                expected=f"0..{self.size}")
        return size

    # --- reads --------------------------------------------------------------------------------

    def root(self, size: int | None = None) -> bytes:
        """The RFC 9162 root of the first `size` leaves (default: all)."""
        with self._lock:
            return self._range_hash(0, self._check_size(size))

    def leaf_hash(self, index: int) -> bytes:
        with self._lock:
            self._check_index(index, self.size)
            return self._levels[0][index]

    def entry(self, index: int) -> bytes:
        """The leaf data (canonical JSON of a DSSE envelope) at `index`."""
        with self._lock:
            self._check_index(index, self.size)
            row = self._db.execute("SELECT data FROM leaves WHERE idx = ?", (index,)).fetchone()
        return bytes(row[0])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf `index` in the tree of `size` leaves (default: current size)."""
        with self._lock:
            size = self._check_size(size)
            self._check_index(index, size)
            return merkle.inclusion_path(index, size, self._range_hash)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """Proof that the tree of `new` leaves extends the tree of `old` leaves."""
        with self._lock:
            new = self._check_size(new, "new")
            old = self._check_size(old, "old")
            if old > new:
                raise LogRangeError("old size is larger than new size", field="old", got=old,
                                    expected=f"<= {new}")
            return merkle.consistency_path(old, new, self._range_hash)

    def checkpoint(self, size: int | None = None) -> str:
        """A signed checkpoint note for the tree of `size` leaves (default: current size)."""
        if self._key is None:
            raise ConfigError("this log was opened without a signing key", field="key")
        with self._lock:
            size = self._check_size(size)
            if self._cp_cache and self._cp_cache[0] == size:
                return self._cp_cache[1]
            text = sign_checkpoint(self.origin, size, self._range_hash(0, size), self._key)
            self._cp_cache = (size, text)
            return text

    def get_receipt(self, receipt_id: str) -> dict[str, Any] | None:
        """The stored receipt document for `receipt_id`, or None when there is none."""
        with self._lock:
            row = self._db.execute("SELECT document FROM receipts WHERE receipt_id = ?",
                                   (str(receipt_id),)).fetchone()
        return None if row is None else json.loads(bytes(row[0]))

    # --- writes -------------------------------------------------------------------------------

    def append(self, data: bytes,
               attach: Callable[[Appended], tuple[str, bytes]] | None = None) -> Appended:
        """Append one leaf durably and return where it landed.

        `attach(appended) -> (receipt_id, document_bytes)` is called with the new index, proof
        and checkpoint before commit; its document is stored in the same transaction, so a
        receipt exists in the database only together with its leaf.
        """
        data = bytes(data)
        h = merkle.leaf_hash(data)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            pushed = False
            try:
                on_disk = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()[0]
                if on_disk != self.size:
                    self._reload()
                    if on_disk != self.size:
                        raise LogCorruptError("log size on disk differs from the leaves loaded",
                                              got=on_disk, expected=self.size)
                index = self.size
                self._push(h)
                pushed = True
                size = self.size
                appended = Appended(index, size, self._range_hash(0, size),
                                    merkle.inclusion_path(index, size, self._range_hash),
                                    self.checkpoint(size) if self._key is not None else "")
                db.execute("INSERT INTO leaves (idx, leaf_hash, data) VALUES (?, ?, ?)", (index, h, data))
                if attach is not None:
                    receipt_id, document = attach(appended)
                    db.execute("INSERT INTO receipts (receipt_id, idx, document) VALUES (?, ?, ?)",
                               (receipt_id, index, document))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if pushed:
                    self._pop()
                    self._cp_cache = None
                raise
            return appended

    # --- maintenance --------------------------------------------------------------------------

    def verify_integrity(self) -> bytes:
        """Recompute every leaf hash from its data and check receipts point at their leaves.

        Returns the root. Raises LogCorruptError naming the first inconsistency.
        """
        with self._lock:
            hashes: list[bytes] = []
            for idx, h, data in self._db.execute("SELECT idx, leaf_hash, data FROM leaves ORDER BY idx"):
                if idx != len(hashes):
                    raise LogCorruptError("gap in log indices", field="leaves.idx", got=idx,
                                          expected=len(hashes))
                if merkle.leaf_hash(bytes(data)) != h:
                    raise LogCorruptError("stored leaf hash does not match leaf data", field=f"leaves[{idx}]")
                hashes.append(bytes(h))
            for rid, idx, doc in self._db.execute("SELECT receipt_id, idx, document FROM receipts"):
                try:
                    parsed = json.loads(bytes(doc))
                    ok = parsed["receipt_id"] == rid and parsed["log"]["index"] == idx
                except (ValueError, KeyError, TypeError):
                    ok = False
                if not ok or not 0 <= idx < len(hashes):
                    raise LogCorruptError("stored receipt does not match its log entry", field=f"receipts[{rid}]")
            root = merkle.root_hash(hashes)
            if root != self._range_hash(0, self.size) or len(hashes) != self.size:
                raise LogCorruptError("log on disk differs from the log in memory", got=len(hashes),
                                      expected=self.size)
            return root

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
            raise LogRangeError("entry index outside the log", field="index", got=index,
                                expected=f"0..{size - 1}" if size else "no entries yet")
