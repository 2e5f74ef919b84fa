"""A minimal DER reader for the vendor extensions `cryptography` does not decode.

AMD VCEK TCB/HWID extensions, Intel PCK SGX extensions and the TCG DICE FWID extension
are read as TLVs. Only definite lengths are accepted (DER); anything else is an error.
"""

from __future__ import annotations

from .errors import EvidenceParseError

INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
IA5_STRING = 0x16
UTF8_STRING = 0x0C
SEQUENCE = 0x30


def read_tlv(data: bytes, offset: int, context: str) -> tuple[int, bytes, int]:
    """(tag, value, next_offset) of the TLV at `offset`."""
    if offset + 2 > len(data):
        raise EvidenceParseError(f"{context}: truncated DER header", field=context, offset=offset)
    tag = data[offset]
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise EvidenceParseError(f"{context}: bad DER length", field=context, offset=offset)
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise EvidenceParseError(f"{context}: DER value overruns its container", field=context, offset=offset)
    return tag, data[pos : pos + length], pos + length


def read_single(data: bytes, expected_tag: int, context: str) -> bytes:
    """The value of the one TLV that `data` consists of, which must have `expected_tag`."""
    tag, value, end = read_tlv(data, 0, context)
    if tag != expected_tag or end != len(data):
        raise EvidenceParseError(
            f"{context}: expected a single DER element with tag {expected_tag:#x}",
            field=context,
            got=f"tag {tag:#x}, {len(data) - end} trailing bytes",
        )
    return value


def read_children(value: bytes, context: str) -> list[tuple[int, bytes]]:
    """The (tag, value) children of a constructed value."""
    out = []
    pos = 0
    while pos < len(value):
        tag, child, pos = read_tlv(value, pos, context)
        out.append((tag, child))
    return out


def decode_integer(value: bytes, context: str) -> int:
    if not value:
        raise EvidenceParseError(f"{context}: empty DER INTEGER", field=context)
    return int.from_bytes(value, "big", signed=True)


def decode_oid(value: bytes, context: str) -> str:
    """Dotted string of a DER OBJECT IDENTIFIER value."""
    if not value or value[-1] & 0x80:
        raise EvidenceParseError(f"{context}: malformed OID", field=context)
    arcs: list[int] = []
    acc = 0
    for byte in value:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(acc)
            acc = 0
    head = arcs[0]
    x = min(head // 40, 2)
    parts = [x, head - 40 * x] + arcs[1:]
    return ".".join(str(p) for p in parts)
