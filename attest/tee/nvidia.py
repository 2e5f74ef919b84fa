"""NVIDIA Hopper GPU evidence: SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response.

Request (37 bytes): SPDMVersion u8 (0x11), code u8 (0xE0), param1 u8 (bit 0: signature
requested), param2 u8 (measurement operation), nonce 32, slot id u8.
Response: SPDMVersion u8, code u8 (0x60), param1 u8, param2 u8 (slot), NumberOfBlocks u8,
MeasurementRecordLength u24, MeasurementRecord (blocks: index u8, spec u8 (bit 0 = DMTF),
size u16, then DMTF value type u8, value size u16, value), nonce 32, OpaqueLength u16,
OpaqueData (NVIDIA TLVs: type u16, size u16, value), signature 96 (ECDSA P-384 r||s, big-endian).
The signature covers the request and the response up to (excluding) the signature.
All integers little-endian. Input may be raw bytes or the hex text NVIDIA tools write.
"""

from __future__ import annotations

from dataclasses import dataclass

from .binary import Reader
from .errors import EvidenceParseError

REQUEST_SIZE = 37
SPDM_VERSION = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
SIGNATURE_SIZE = 96
DMTF_SPEC = 0x01

OPAQUE_TYPES = {
    1: "cert_issuer_name", 2: "cert_authority_key_identifier", 3: "driver_version", 4: "gpu_info",
    5: "id_sku", 6: "vbios_version", 7: "manufacturer_id", 8: "tamper_detection", 9: "smc", 10: "vpr",
    11: "nvdec0_status", 12: "measurement_count", 13: "cpr_info", 14: "board_id", 15: "chip_sku",
    16: "chip_sku_mod", 17: "project", 18: "project_sku", 19: "project_sku_mod", 20: "fwid",
    21: "protected_pcie_status", 22: "switch_pdi", 23: "floorswept_ports", 24: "position_id",
    25: "lock_switch_status", 32: "gpu_link_conn", 33: "sys_enable_status", 34: "opaque_data_version",
    35: "chip_info", 36: "feature_flag",
}
_STRING_TYPES = {"driver_version", "chip_sku", "chip_sku_mod", "project", "project_sku", "chip_info"}


@dataclass(frozen=True)
class MeasurementBlock:
    index: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class NvidiaEvidence:
    raw: bytes
    request_nonce: bytes
    request_param1: int
    request_param2: int
    slot_id: int
    spdm_version: int
    response_param1: int
    response_param2: int
    blocks: tuple[MeasurementBlock, ...]
    response_nonce: bytes
    opaque: tuple[tuple[str, bytes], ...]
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[: len(self.raw) - SIGNATURE_SIZE]

    def opaque_field(self, key: str) -> bytes | None:
        return next((v for k, v in self.opaque if k == key), None)

    @property
    def driver_version(self) -> str | None:
        raw = self.opaque_field("driver_version")
        return None if raw is None else raw.rstrip(b"\x00").decode("ascii", "replace")

    @property
    def vbios_version(self) -> str | None:
        raw = self.opaque_field("vbios_version")
        return None if raw is None else format_vbios(raw)


def format_vbios(raw: bytes) -> str:
    """NVIDIA's VBIOS version text: the first half reversed, then the first byte of the second half."""
    half = len(raw) // 2
    if half == 0:
        return ""
    parts = [f"{b:02X}" for b in reversed(raw[:half])] + [f"{raw[half]:02X}"]
    return ".".join(parts)


def decode_input(data: bytes) -> bytes:
    """Raw bytes, or hex text (whitespace allowed) as NVIDIA's tools write it."""
    stripped = bytes(data).strip()
    if stripped and all(c in b"0123456789abcdefABCDEF \n\r\t" for c in stripped):
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except ValueError as exc:
            raise EvidenceParseError(f"NVIDIA evidence: bad hex text: {exc}", field="hex") from exc
    return bytes(data)


def parse_nvidia(data: bytes) -> NvidiaEvidence:
    """Parse SPDM GET_MEASUREMENTS request || response (raw bytes or hex text)."""
    raw = decode_input(data)
    r = Reader(raw, "NVIDIA SPDM evidence")
    version = r.u8("request.SPDMVersion")
    if version != SPDM_VERSION:
        raise r.fail("unsupported SPDM version", "request.SPDMVersion", offset=0, got=f"{version:#x}",
                     expected="0x11")
    code = r.u8("request.RequestResponseCode")
    if code != GET_MEASUREMENTS:
        raise r.fail("not a GET_MEASUREMENTS request", "request.RequestResponseCode", offset=1,
                     got=f"{code:#x}", expected="0xe0")
    p1, p2 = r.u8("request.Param1"), r.u8("request.Param2")
    nonce = r.take(32, "request.Nonce")
    slot = r.u8("request.SlotIDParam")
    rversion = r.u8("response.SPDMVersion")
    if rversion != version:
        raise r.fail("response SPDM version differs from the request", "response.SPDMVersion",
                     offset=REQUEST_SIZE, got=f"{rversion:#x}", expected=f"{version:#x}")
    rcode = r.u8("response.RequestResponseCode")
    if rcode != MEASUREMENTS:
        raise r.fail("not a MEASUREMENTS response", "response.RequestResponseCode", offset=REQUEST_SIZE + 1,
                     got=f"{rcode:#x}", expected="0x60")
    rp1, rp2 = r.u8("response.Param1"), r.u8("response.Param2")
    count = r.u8("response.NumberOfBlocks")
    rec_len = r.u24("response.MeasurementRecordLength")
    rec_start = r.offset
    rec = Reader(raw, "NVIDIA measurement record", offset=rec_start, end=rec_start + rec_len)
    if rec_start + rec_len > len(raw):
        raise r.fail("measurement record overruns the evidence", "response.MeasurementRecordLength",
                     offset=rec_start - 3, got=rec_len)
    blocks = []
    for i in range(count):
        index = rec.u8(f"block[{i}].Index")
        spec = rec.u8(f"block[{i}].MeasurementSpecification")
        if spec != DMTF_SPEC:
            raise rec.fail("measurement block is not in the DMTF format", f"block[{i}].MeasurementSpecification",
                           offset=rec.offset - 1, got=spec, expected=DMTF_SPEC)
        size = rec.u16(f"block[{i}].MeasurementSize")
        inner = Reader(raw, f"NVIDIA measurement block {i}", offset=rec.offset, end=rec.offset + size)
        rec.take(size, f"block[{i}].Measurement")
        vtype = inner.u8(f"block[{i}].DMTFSpecMeasurementValueType")
        vsize = inner.u16(f"block[{i}].DMTFSpecMeasurementValueSize")
        value = inner.take(vsize, f"block[{i}].DMTFSpecMeasurementValue")
        if inner.remaining():
            raise inner.fail("measurement block has trailing bytes", f"block[{i}]", got=inner.remaining())
        blocks.append(MeasurementBlock(index, vtype, value))
    if rec.remaining():
        raise rec.fail("measurement record has bytes after its blocks", "response.MeasurementRecord",
                       got=rec.remaining())
    r.offset = rec_start + rec_len
    rnonce = r.take(32, "response.Nonce")
    opaque_len = r.u16("response.OpaqueLength")
    o = Reader(raw, "NVIDIA opaque data", offset=r.offset, end=r.offset + opaque_len)
    r.take(opaque_len, "response.OpaqueData")
    opaque: list[tuple[str, bytes]] = []
    while o.remaining():
        t = o.u16("opaque.DataType")
        size = o.u16("opaque.DataSize")
        key = OPAQUE_TYPES.get(t, f"type_{t}")
        value = o.take(size, f"opaque.{key}")
        if any(k == key for k, _ in opaque):
            raise o.fail("duplicate opaque data type", f"opaque.{key}", offset=o.offset - size - 4)
        opaque.append((key, value))
    signature = r.take(SIGNATURE_SIZE, "response.Signature")
    if r.remaining():
        raise r.fail("bytes after the signature", "response.Signature", got=r.remaining(), expected=0)
    return NvidiaEvidence(raw, nonce, p1, p2, slot, version, rp1, rp2, tuple(blocks), rnonce, tuple(opaque),
                          signature)


def show_nvidia(ev: NvidiaEvidence) -> dict:
    """Every field, JSON-able, for `specguard attest show`."""
    opaque: dict[str, str] = {}
    for key, value in ev.opaque:
        if key in _STRING_TYPES:
            opaque[key] = value.rstrip(b"\x00").decode("ascii", "replace")
        elif key == "vbios_version":
            opaque[key] = format_vbios(value)
        else:
            opaque[key] = value.hex()
    return {
        "format": "NVIDIA SPDM 1.1 GET_MEASUREMENTS",
        "spdm_version": f"{ev.spdm_version:#x}",
        "request": {"param1": ev.request_param1, "param2": ev.request_param2, "nonce": ev.request_nonce.hex(),
                    "slot_id": ev.slot_id},
        "response": {"param1": ev.response_param1, "param2": ev.response_param2, "nonce": ev.response_nonce.hex()},
        "measurements": {str(b.index): b.value.hex() for b in ev.blocks},
        "opaque_data": opaque,
        "signature": ev.signature.hex(),
    }
