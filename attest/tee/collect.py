"""Collect evidence on this machine, bound to a node key and nonce.

Order of preference: configfs-tsm (/sys/kernel/config/tsm/report, Linux >= 6.7; SEV-SNP and
TDX), then /dev/sev-guest (SNP_GET_REPORT ioctl). A TDX quote needs configfs-tsm (the
/dev/tdx_guest TDREPORT alone is not a quote). Elsewhere, only when explicitly allowed,
SIMULATED evidence is produced with a loud warning.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import fcntl
import logging
import os
import uuid
from pathlib import Path

from specguard.errors import SpecguardError

from ..binding import check_nonce, report_data_for
from .document import EvidenceDocument
from .simulated import make_simulated_report

log = logging.getLogger("specguard.attest")

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEV = Path("/dev/sev-guest")
TDX_GUEST_DEV = Path("/dev/tdx_guest")

#: GUIDs of the SEV-SNP extended-report certificate table (GHCB spec)
SNP_CERT_GUIDS = {
    "63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
    "a8074bc2-a25a-483e-aae6-39c045a0b8a1": "VLEK",
    "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
    "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK",
}


class CollectionError(SpecguardError):
    """Evidence could not be collected on this machine."""


def tee_available() -> str | None:
    """Which interface this machine offers ('configfs-tsm', 'sev-guest') or None."""
    if TSM_REPORT_DIR.is_dir():
        return "configfs-tsm"
    if SEV_GUEST_DEV.exists():
        return "sev-guest"
    return None


def snp_certs_from_table(aux: bytes) -> bytes | None:
    """PEM of the VCEK/VLEK (first) and ASK/ARK from an SNP certificate table, or None."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    found: dict[str, bytes] = {}
    pos = 0
    while pos + 24 <= len(aux):
        guid = str(uuid.UUID(bytes_le=aux[pos : pos + 16]))
        offset = int.from_bytes(aux[pos + 16 : pos + 20], "little")
        length = int.from_bytes(aux[pos + 20 : pos + 24], "little")
        pos += 24
        if guid == "00000000-0000-0000-0000-000000000000":
            break
        if guid in SNP_CERT_GUIDS and offset + length <= len(aux):
            found[SNP_CERT_GUIDS[guid]] = aux[offset : offset + length]
    pem = b""
    for role in ("VCEK", "VLEK", "ASK", "ARK"):
        if role in found:
            try:
                pem += x509.load_der_x509_certificate(found[role]).public_bytes(Encoding.PEM)
            except ValueError:
                log.warning("SNP certificate table entry %s is not a DER certificate", role)
    return pem or None


def _collect_tsm(report_data: bytes) -> tuple[str, bytes, bytes | None]:
    entry = TSM_REPORT_DIR / f"specguard-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    entry.mkdir()
    try:
        (entry / "inblob").write_bytes(report_data)
        provider = (entry / "provider").read_text().strip()
        outblob = (entry / "outblob").read_bytes()
        aux = None
        aux_path = entry / "auxblob"
        if aux_path.exists():
            try:
                aux = aux_path.read_bytes()
            except OSError:
                aux = None
    finally:
        try:
            entry.rmdir()
        except OSError:
            log.warning("could not remove configfs-tsm entry %s", entry)
    if provider.startswith("sev"):
        return "snp", outblob, snp_certs_from_table(aux) if aux else None
    if provider.startswith("tdx"):
        return "tdx", outblob, None
    raise CollectionError("unknown configfs-tsm provider", field="provider", got=provider)


class _SnpGuestRequest(ctypes.Structure):
    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]


def _collect_sev_guest(report_data: bytes) -> tuple[str, bytes, bytes | None]:
    req = ctypes.create_string_buffer(report_data + bytes(32), 96)  # user_data[64], vmpl u32 = 0, reserved
    resp = ctypes.create_string_buffer(4000)
    ioc = _SnpGuestRequest(1, ctypes.addressof(req), ctypes.addressof(resp), 0)
    snp_get_report = (3 << 30) | (ctypes.sizeof(_SnpGuestRequest) << 16) | (ord("S") << 8) | 0x0
    fd = os.open(SEV_GUEST_DEV, os.O_RDWR)
    try:
        fcntl.ioctl(fd, snp_get_report, ioc)
    except OSError as exc:
        raise CollectionError(f"SNP_GET_REPORT failed: {errno.errorcode.get(exc.errno, exc.errno)}",
                              field="/dev/sev-guest", got=ioc.exitinfo2) from exc
    finally:
        os.close(fd)
    raw = resp.raw
    status = int.from_bytes(raw[0:4], "little")
    size = int.from_bytes(raw[4:8], "little")
    if status != 0 or size != 0x4A0:
        raise CollectionError("SNP_GET_REPORT returned an error", field="status", got=(status, size))
    return "snp", raw[32 : 32 + size], None


def collect_evidence(public_key: bytes, nonce: bytes, *, allow_simulated: bool = False,
                     now: dt.datetime | None = None) -> EvidenceDocument:
    """Evidence from this machine's TEE binding `public_key` to `nonce`.

    Without a TEE, SIMULATED evidence is returned only if `allow_simulated` (with a warning);
    otherwise a CollectionError.
    """
    check_nonce(nonce)
    report_data = report_data_for(public_key, nonce)
    when = now or dt.datetime.now(dt.UTC)
    iface = tee_available()
    if iface == "configfs-tsm":
        kind, blob, certs = _collect_tsm(report_data)
    elif iface == "sev-guest":
        kind, blob, certs = _collect_sev_guest(report_data)
    else:
        if not allow_simulated:
            hint = " (/dev/tdx_guest alone cannot produce a quote; enable configfs-tsm)" \
                if TDX_GUEST_DEV.exists() else ""
            raise CollectionError("no TEE interface on this machine and simulated evidence is not allowed" + hint,
                                  field="tee", expected=[str(TSM_REPORT_DIR), str(SEV_GUEST_DEV)])
        log.warning("SIMULATED attestation: no TEE on this machine; producing SIMULATED evidence that "
                    "proves nothing (policy must allow_simulated, INSECURE)")
        return EvidenceDocument("simulated", make_simulated_report(report_data), None, nonce, public_key,
                                when, True)
    return EvidenceDocument(kind, blob, certs, nonce, public_key, when, False)

