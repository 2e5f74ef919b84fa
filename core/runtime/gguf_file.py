"""A streaming GGUF reader: metadata and tensor layout without loading (or dequantizing) any tensor.

`read_gguf(path)` parses the header sequentially through a buffered file (a few MB of Python
objects even for an 8B model's 128k-token vocabulary) and returns a `GGUFFile`: the metadata
values (scalars and strings as Python values, arrays as lists), each key's raw value bytes as
stored (for the digest), and each tensor's name, GGML type, shape, absolute offset and size.
`gguf_model_digest(path)` (format v3, see `specguard.runtime.digest`) streams the tensors'
bytes from disk in 1 MiB chunks: memory stays flat whatever the file size.

Only the `gguf` package's constant tables are used (block sizes of the quantization types);
malformed files raise `ModelError` naming what was read and where.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ModelError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
#: GGUF value types: id -> (name, struct format or None for string/array)
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("u8", "<B"), 1: ("i8", "<b"), 2: ("u16", "<H"), 3: ("i16", "<h"), 4: ("u32", "<I"), 5: ("i32", "<i"),
    6: ("f32", "<f"), 7: ("bool", "<?"), 10: ("u64", "<Q"), 11: ("i64", "<q"), 12: ("f64", "<d"),
}
_STRING, _ARRAY = 8, 9
#: refuse absurd counts before allocating (a hostile or truncated header)
_MAX_COUNT = 1 << 32
_MAX_STRING = 1 << 26


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]
    offset: int  # absolute, from the start of the file
    n_bytes: int


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # key -> (type id, value bytes as stored)
    tensors: list[GGUFTensor] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        """`<architecture>.<suffix>` from the metadata (e.g. `context_length`)."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)


class _Reader:
    """Sequential little-endian reads that also return the bytes read (for raw value capture)."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f = f
        self.path = path

    def take(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelError("truncated GGUF file", field=what, got=f"{len(data)} of {n} bytes", expected=str(self.path))
        return data

    def unpack(self, fmt: str, what: str) -> tuple[Any, bytes]:
        data = self.take(struct.calcsize(fmt), what)
        return struct.unpack(fmt, data)[0], data

    def count(self, what: str, limit: int = _MAX_COUNT) -> tuple[int, bytes]:
        n, data = self.unpack("<Q", what)
        if n > limit:
            raise ModelError("implausible count in GGUF header", field=what, got=n, expected=f"<= {limit}")
        return n, data

    def string(self, what: str) -> tuple[str, bytes]:
        n, head = self.count(what, _MAX_STRING)
        data = self.take(n, what)
        try:
            return data.decode("utf-8"), head + data
        except UnicodeDecodeError as exc:
            raise ModelError("GGUF string is not UTF-8", field=what, got=repr(data[:40])) from exc

    def value(self, type_id: int, what: str) -> tuple[Any, bytes]:
        if type_id in _SCALARS:
            return self.unpack(_SCALARS[type_id][1], what)
        if type_id == _STRING:
            return self.string(what)
        if type_id == _ARRAY:
            item_type, head = self.unpack("<I", what)
            n, count = self.count(what)
            parts = [head, count]
            items = []
            for _ in range(n):
                item, data = self.value(item_type, what)
                items.append(item)
                parts.append(data)
            return items, b"".join(parts)
        raise ModelError("unknown GGUF value type", field=what, got=type_id)


def _quant_size(type_id: int, name: str) -> tuple[str, int, int]:
    """(type name, block size in elements, bytes per block) of a GGML type."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
        block, size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as exc:
        raise ModelError("unknown GGML tensor type", field=f"tensor {name!r}", got=type_id) from exc
    return qtype.name, block, size


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header (metadata and tensor infos); no tensor data is read."""
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ModelError("cannot open GGUF file", field="model", got=str(path)) from exc
    with f:
        r = _Reader(f, path)
        magic = r.take(4, "magic")
        if magic != GGUF_MAGIC:
            raise ModelError("not a GGUF file", field="magic", got=repr(magic), expected=repr(GGUF_MAGIC))
        version, _ = r.unpack("<I", "version")
        if version not in (2, 3):
            raise ModelError("unsupported GGUF version", field="version", got=version, expected="2 or 3")
        n_tensors, _ = r.count("tensor_count", 1 << 24)
        n_kv, _ = r.count("kv_count", 1 << 20)
        out = GGUFFile(path=path, version=version)
        for _ in range(n_kv):
            key, _ = r.string("metadata key")
            type_id, type_bytes = r.unpack("<I", f"{key} type")
            value, raw = r.value(type_id, key)
            out.metadata[key] = value
            out.raw[key] = (type_id, type_bytes + raw)
        infos = []
        for _ in range(n_tensors):
            name, _ = r.string("tensor name")
            n_dims, _ = r.unpack("<I", f"{name} n_dims")
            if n_dims > 8:
                raise ModelError("too many tensor dimensions", field=f"tensor {name!r}", got=n_dims, expected="<= 8")
            shape = tuple(r.unpack("<Q", f"{name} dims")[0] for _ in range(n_dims))
            type_id, _ = r.unpack("<I", f"{name} type")
            offset, _ = r.unpack("<Q", f"{name} offset")
            infos.append((name, shape, type_id, offset))
        alignment = int(out.metadata.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
        start = -(-f.tell() // alignment) * alignment
    size = path.stat().st_size
    for name, shape, type_id, offset in infos:
        type_name, block, block_bytes = _quant_size(type_id, name)
        elements = 1
        for d in shape:
            elements *= int(d)
        n_bytes = elements // block * block_bytes
        if start + offset + n_bytes > size:
            raise ModelError("GGUF tensor data runs past the end of the file", field=f"tensor {name!r}",
                             got=start + offset + n_bytes, expected=f"<= {size}")
        out.tensors.append(GGUFTensor(name, type_id, type_name, shape, start + offset, n_bytes))
    return out
