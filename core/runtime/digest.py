"""Model identity by streaming the model file: the v3 model digest of a GGUF.

Bytes hashed (SHA-256), format v3:

    lp("specguard/model-digest/v3") || lp("gguf")
    for each metadata key, sorted by key (UTF-8 bytes), except bookkeeping (`general.*` other
    than `general.architecture`):
        lp(key) || lp(value bytes exactly as stored in the file: type id (u32 LE) and encoded value)
    for each tensor, sorted by name:
        lp(name, GGML type name (e.g. "Q4_K"), shape as comma-separated decimal, GGUF dim order)
        || 8-byte big-endian length || the tensor's bytes as stored (quantized blocks)

It names what a runtime computes from: the tensors in their native (quantized) encoding and
every metadata value that changes the computation (hyperparameters, rope, eps, tokenizer, chat
template). Nothing is dequantized; tensor bytes are read from disk in 1 MiB chunks, so memory
is flat whatever the size of the file.

Relation to v2 (`specguard.models.model_digest`): v2 hashes the *dequantized fp32 torch*
state dict and the transformers config built from the file, so it needs an fp32 copy of the
weights. A GGUF loaded by either runtime (torch or llama.cpp) is now named by its v3 digest;
a model that exists only in memory (tests, substitutes) or comes from a model directory keeps
its v2 digest. Receipts signed with a v2 digest keep verifying: `LoadedModel.accepts_digest`
accepts the model's v2 digest too (computed from the torch weights when they are held, or, for
a llama.cpp runtime, from a one-time dequantizing load; see docs/engines.md "Runtimes").
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from ..canonical import lp
from .gguf_file import GGUFFile, read_gguf

MODEL_DIGEST_V3_TAG = b"specguard/model-digest/v3"
_CHUNK = 1 << 20
_KEPT_GENERAL = frozenset({"general.architecture"})

class FileMemo:
    """Values computed from a file's bytes, kept per (resolved path, size, mtime): a changed file is
    recomputed. Thread-safe; the computation itself runs outside the lock."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path, compute: Callable[[Path], str]) -> str:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        key = (str(resolved), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = compute(resolved)
        with self._lock:
            self._values[key] = value
        return value


_memo = FileMemo()


def _hashed_key(key: str) -> bool:
    return not key.startswith("general.") or key in _KEPT_GENERAL


def gguf_model_digest(path: str | Path, parsed: GGUFFile | None = None) -> str:
    """`sha256:<hex>`, the v3 model digest of a GGUF file (cached per path, size and mtime)."""
    return _memo.get(path, lambda resolved: _stream_digest(resolved, parsed))


def _stream_digest(resolved: Path, parsed: GGUFFile | None) -> str:
    info = parsed or read_gguf(resolved)
    h = hashlib.sha256(lp(MODEL_DIGEST_V3_TAG, b"gguf"))
    for name in sorted(info.raw, key=lambda k: k.encode("utf-8")):
        if _hashed_key(name):
            h.update(lp(name.encode("utf-8"), info.raw[name][1]))
    with resolved.open("rb") as f:
        for tensor in sorted(info.tensors, key=lambda t: t.name.encode("utf-8")):
            shape = ",".join(str(d) for d in tensor.shape)
            h.update(lp(tensor.name.encode("utf-8"), tensor.type_name.encode(), shape.encode()))
            h.update(tensor.n_bytes.to_bytes(8, "big"))
            f.seek(tensor.offset)
            left = tensor.n_bytes
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break  # read_gguf checked the sizes; a file shrinking under us hashes short and differs
                h.update(chunk)
                left -= len(chunk)
    return "sha256:" + h.hexdigest()
