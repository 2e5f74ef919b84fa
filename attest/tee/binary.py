"""A bounds-checked little-endian reader for fixed binary layouts.

Every read names the field it reads, so a short or malformed input fails with one
`EvidenceParseError` that says which field at which offset, never IndexError or struct.error.
"""

from __future__ import annotations

from .errors import EvidenceParseError


class Reader:
    """Reads named fields from `data` starting at `offset`."""

    def __init__(self, data: bytes, context: str, offset: int = 0, end: int | None = None) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EvidenceParseError(f"{context}: evidence must be bytes", got=type(data).__name__)
        self.data = bytes(data)
        self.context = context
        self.offset = offset
        self.end = len(self.data) if end is None else min(end, len(self.data))

    def remaining(self) -> int:
        return self.end - self.offset

    def take(self, size: int, field: str) -> bytes:
        """The next `size` bytes, named `field`."""
        if size < 0 or self.offset + size > self.end:
            raise EvidenceParseError(
                f"{self.context}: truncated {field}: need {size} bytes, {max(self.remaining(), 0)} left",
                field=field,
                offset=self.offset,
            )
        out = self.data[self.offset : self.offset + size]
        self.offset += size
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")

    def u8(self, field: str) -> int:
        return self.uint(1, field)

    def u16(self, field: str) -> int:
        return self.uint(2, field)

    def u24(self, field: str) -> int:
        return self.uint(3, field)

    def u32(self, field: str) -> int:
        return self.uint(4, field)

    def u64(self, field: str) -> int:
        return self.uint(8, field)

    def fail(self, message: str, field: str, offset: int | None = None, **kw: object) -> EvidenceParseError:
        """An error for `field` at `offset` (default: the current offset)."""
        return EvidenceParseError(
            f"{self.context}: {message}", field=field, offset=self.offset if offset is None else offset, **kw
        )
