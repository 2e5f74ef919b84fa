"""Intel TDX DCAP quote (v4 and v5): byte layout to typed, immutable objects.

Layout: Intel TDX DCAP Quoting Library API, quote format appendix. All integers little-endian.

    header (48)          version u16, att_key_type u16 (2 = ECDSA P-256), tee_type u32 (0x81 = TDX),
                         reserved u16 x2, qe_vendor_id 16, user_data 20
    v4: body (584) at 0x30
    v5: body_type u16 (2 = TDX 1.0, 584 bytes; 3 = TDX 1.5, 648 bytes), body_size u32, body at 0x36
    signature_data_len u32, then signature data (trailing bytes after it are ignored):
        quote signature 64 (r||s, big-endian), attestation key 64 (x||y),
        certification data: type u16 (must be 6 = QE report), size u32, then
            QE report 384 (SGX report body), QE report signature 64,
            QE auth data: size u16, data
            certification data: type u16 (5 = PCK cert chain, PEM), size u32, data
The quote signature covers the header and body (including the v5 body descriptor).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .binary import Reader
from .certs import load_certificates
from .errors import EvidenceParseError

HEADER_SIZE = 48
TDX_TEE_TYPE = 0x81
ATT_KEY_ECDSA_P256 = 2
BODY_TDX10 = 584
BODY_TDX15 = 648
BODY_TYPES = {2: BODY_TDX10, 3: BODY_TDX15}
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
SGX_REPORT_SIZE = 384
TD_ATTRIBUTES_DEBUG_BIT = 0
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """The TD quote body (TDX 1.0; TDX 1.5 adds tee_tcb_svn2 and mr_servicetd)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") >> TD_ATTRIBUTES_DEBUG_BIT & 1)


@dataclass(frozen=True)
class EnclaveReport:
    """An SGX report body (the Quoting Enclave's report)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class TdxQuote:
    raw: bytes
    header: QuoteHeader
    body_type: int
    body: TdReportBody
    signed_size: int
    signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    pck_chain: tuple[x509.Certificate, ...]
    trailing: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[: self.signed_size]


def _parse_body(r: Reader, size: int) -> TdReportBody:
    b = TdReportBody(
        tee_tcb_svn=r.take(16, "TEE_TCB_SVN"),
        mr_seam=r.take(48, "MRSEAM"),
        mr_signer_seam=r.take(48, "MRSIGNERSEAM"),
        seam_attributes=r.take(8, "SEAMATTRIBUTES"),
        td_attributes=r.take(8, "TDATTRIBUTES"),
        xfam=r.take(8, "XFAM"),
        mr_td=r.take(48, "MRTD"),
        mr_config_id=r.take(48, "MRCONFIGID"),
        mr_owner=r.take(48, "MROWNER"),
        mr_owner_config=r.take(48, "MROWNERCONFIG"),
        rtmrs=(r.take(48, "RTMR0"), r.take(48, "RTMR1"), r.take(48, "RTMR2"), r.take(48, "RTMR3")),
        report_data=r.take(64, "REPORTDATA"),
    )
    if size == BODY_TDX15:
        b = TdReportBody(**{**b.__dict__, "tee_tcb_svn2": r.take(16, "TEE_TCB_SVN2"),
                            "mr_servicetd": r.take(48, "MRSERVICETD")})
    return b


def parse_enclave_report(data: bytes, context: str = "QE report") -> EnclaveReport:
    r = Reader(data, context)
    cpu_svn = r.take(16, "CPUSVN")
    misc_select = r.u32("MISCSELECT")
    r.take(28, "reserved1")
    attributes = r.take(16, "ATTRIBUTES")
    mr_enclave = r.take(32, "MRENCLAVE")
    r.take(32, "reserved2")
    mr_signer = r.take(32, "MRSIGNER")
    r.take(96, "reserved3")
    isv_prod_id = r.u16("ISVPRODID")
    isv_svn = r.u16("ISVSVN")
    r.take(60, "reserved4")
    report_data = r.take(64, "REPORTDATA")
    return EnclaveReport(bytes(data), cpu_svn, misc_select, attributes, mr_enclave, mr_signer,
                         isv_prod_id, isv_svn, report_data)


def parse_tdx_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote v4 or v5; bytes after the signature data are ignored."""
    r = Reader(data, "TDX quote")
    version = r.u16("header.version")
    if version not in (4, 5):
        raise r.fail("unsupported quote version", "header.version", offset=0, got=version, expected=(4, 5))
    att_key_type = r.u16("header.att_key_type")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise r.fail("unsupported attestation key type", "header.att_key_type", offset=2,
                     got=att_key_type, expected="2 (ECDSA-256-with-P-256)")
    tee_type = r.u32("header.tee_type")
    if tee_type != TDX_TEE_TYPE:
        raise r.fail("not a TDX quote", "header.tee_type", offset=4, got=f"{tee_type:#x}", expected="0x81")
    r.take(4, "header.reserved")
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")
    header = QuoteHeader(version, att_key_type, tee_type, qe_vendor_id, user_data)
    if version == 4:
        body_type, body_size = 2, BODY_TDX10
    else:
        body_type = r.u16("body_descriptor.type")
        body_size = r.u32("body_descriptor.size")
        if BODY_TYPES.get(body_type) != body_size:
            raise r.fail("unsupported quote body type/size", "body_descriptor", offset=HEADER_SIZE,
                         got=(body_type, body_size), expected="type 2 / 584 or type 3 / 648")
    body = _parse_body(r, body_size)
    signed_size = r.offset
    sig_len = r.u32("signature_data_len")
    sig_end = r.offset + sig_len
    if sig_end > len(r.data):
        raise r.fail("signature data overruns the quote", "signature_data_len", offset=signed_size,
                     got=sig_len, expected=f"<= {len(r.data) - r.offset}")
    s = Reader(r.data, "TDX quote signature data", offset=r.offset, end=sig_end)
    signature = s.take(64, "quote_signature")
    attestation_key = s.take(64, "attestation_key")
    cert_type = s.u16("certification_data.type")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise s.fail("unsupported certification data type", "certification_data.type", offset=s.offset - 2,
                     got=cert_type, expected="6 (QE report certification data)")
    cert_size = s.u32("certification_data.size")
    if cert_size > s.remaining():
        raise s.fail("certification data overruns the signature data", "certification_data.size",
                     offset=s.offset - 4, got=cert_size, expected=f"<= {s.remaining()}")
    q = Reader(r.data, "TDX QE report certification data", offset=s.offset, end=s.offset + cert_size)
    qe_report_raw = q.take(SGX_REPORT_SIZE, "qe_report")
    qe_report = parse_enclave_report(qe_report_raw)
    qe_sig = q.take(64, "qe_report_signature")
    auth_size = q.u16("qe_auth_data.size")
    auth = q.take(auth_size, "qe_auth_data")
    pck_type = q.u16("pck_certification_data.type")
    if pck_type != CERT_TYPE_PCK_CHAIN:
        raise q.fail("unsupported PCK certification data type", "pck_certification_data.type",
                     offset=q.offset - 2, got=pck_type, expected="5 (PCK certificate chain)")
    pck_size = q.u32("pck_certification_data.size")
    pem_offset = q.offset
    pem = q.take(pck_size, "pck_certification_data")
    try:
        chain = tuple(load_certificates(pem, "PCK certificate chain"))
    except EvidenceParseError as exc:
        raise EvidenceParseError(exc.message, field="pck_certification_data", offset=pem_offset) from exc
    return TdxQuote(
        raw=bytes(r.data),
        header=header,
        body_type=body_type,
        body=body,
        signed_size=signed_size,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=pem,
        pck_chain=chain,
        trailing=len(r.data) - sig_end,
    )


def show_tdx(quote: TdxQuote) -> dict:
    """Every field of the quote, JSON-able, for `specguard attest show`."""
    b = quote.body
    out = {
        "format": f"Intel TDX quote v{quote.header.version}",
        "header": {
            "version": quote.header.version,
            "att_key_type": quote.header.att_key_type,
            "tee_type": f"{quote.header.tee_type:#x}",
            "qe_vendor_id": quote.header.qe_vendor_id.hex(),
            "user_data": quote.header.user_data.hex(),
        },
        "body_type": quote.body_type,
        "tee_tcb_svn": b.tee_tcb_svn.hex(),
        "mr_seam": b.mr_seam.hex(),
        "mr_signer_seam": b.mr_signer_seam.hex(),
        "seam_attributes": b.seam_attributes.hex(),
        "td_attributes": b.td_attributes.hex(),
        "td_attributes_debug": b.debug,
        "xfam": b.xfam.hex(),
        "mr_td": b.mr_td.hex(),
        "mr_config_id": b.mr_config_id.hex(),
        "mr_owner": b.mr_owner.hex(),
        "mr_owner_config": b.mr_owner_config.hex(),
        "rtmr0": b.rtmrs[0].hex(),
        "rtmr1": b.rtmrs[1].hex(),
        "rtmr2": b.rtmrs[2].hex(),
        "rtmr3": b.rtmrs[3].hex(),
        "report_data": b.report_data.hex(),
        "attestation_key": quote.attestation_key.hex(),
        "qe_report": {
            "cpu_svn": quote.qe_report.cpu_svn.hex(),
            "misc_select": quote.qe_report.misc_select,
            "attributes": quote.qe_report.attributes.hex(),
            "mr_enclave": quote.qe_report.mr_enclave.hex(),
            "mr_signer": quote.qe_report.mr_signer.hex(),
            "isv_prod_id": quote.qe_report.isv_prod_id,
            "isv_svn": quote.qe_report.isv_svn,
            "report_data": quote.qe_report.report_data.hex(),
        },
        "qe_auth_data": quote.qe_auth_data.hex(),
        "pck_chain": [c.subject.rfc4514_string() for c in quote.pck_chain],
        "trailing_bytes_ignored": quote.trailing,
    }
    if b.tee_tcb_svn2 is not None:
        out["tee_tcb_svn2"] = b.tee_tcb_svn2.hex()
        out["mr_servicetd"] = (b.mr_servicetd or b"").hex()
    return out
