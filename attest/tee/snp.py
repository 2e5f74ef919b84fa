"""AMD SEV-SNP ATTESTATION_REPORT: byte layout to a typed, immutable object.

Layout: AMD SEV-SNP Firmware ABI Specification (pub. 56860), "ATTESTATION_REPORT Structure".
The report is exactly 0x4A0 bytes, little-endian. Versions 2, 3 and 5 are accepted (3 adds
the CPUID family/model/stepping at 0x188; 5 adds the mitigation vectors at 0x1F8/0x200).
The signature (ECDSA P-384 / SHA-384) covers bytes 0x000-0x29F; R and S are 72-byte
little-endian fields at 0x2A0 and 0x2E8, the rest of the 0x200-byte signature area is zero.

TCB_VERSION (8 bytes) layout differs by product:
Milan/Genoa: [bootloader, tee, 0, 0, 0, 0, snp, microcode];
Turin:       [fmc, bootloader, tee, snp, 0, 0, 0, microcode].
"""

from __future__ import annotations

from dataclasses import dataclass

from .binary import Reader

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_OFFSET = 0x2A0
R_SIZE = 72
SUPPORTED_VERSIONS = (2, 3, 5)

POLICY_DEBUG_BIT = 19
POLICY_SMT_BIT = 16
POLICY_MIGRATE_MA_BIT = 18
POLICY_SINGLE_SOCKET_BIT = 20

SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "NONE"}

#: CPUID family IDs (report v3+) per product line
FAMILY_PRODUCTS = {0x19: "Milan/Genoa", 0x1A: "Turin"}


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION; `fmc` is None outside Turin."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def as_dict(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


def decode_tcb(raw: int, turin: bool) -> TcbVersion:
    """Decode TCB_VERSION `raw` in the Milan/Genoa or Turin byte layout."""
    b = raw.to_bytes(8, "little")
    if turin:
        return TcbVersion(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
    return TcbVersion(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])


@dataclass(frozen=True)
class SnpReport:
    """One parsed SEV-SNP attestation report (all integer fields decoded, bytes kept raw)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: int
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb_raw: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb_raw: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes
    signature_reserved: bytes

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signing_key(self) -> str:
        return SIGNING_KEYS.get(self.flags >> 2 & 0x7, f"reserved({self.flags >> 2 & 0x7})")

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags >> 1 & 1)

    @property
    def is_turin(self) -> bool:
        """True when the report says it came from a Turin (family 0x1A) part (v3+ only)."""
        return self.cpuid_fam_id == 0x1A

    def tcb(self, which: str, turin: bool | None = None) -> TcbVersion:
        """Decoded `current`, `reported`, `committed` or `launch` TCB."""
        raw = getattr(self, f"{which}_tcb_raw")
        return decode_tcb(raw, self.is_turin if turin is None else turin)


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse a SEV-SNP ATTESTATION_REPORT (exactly 0x4A0 bytes)."""
    r = Reader(data, "SEV-SNP report")
    if len(r.data) != REPORT_SIZE:
        raise r.fail(
            "report has the wrong length", "length", offset=0, got=len(r.data), expected=REPORT_SIZE
        )
    version = r.u32("VERSION")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail("unsupported report version", "VERSION", offset=0, got=version, expected=SUPPORTED_VERSIONS)
    guest_svn = r.u32("GUEST_SVN")
    policy = r.u64("POLICY")
    family_id = r.take(16, "FAMILY_ID")
    image_id = r.take(16, "IMAGE_ID")
    vmpl = r.u32("VMPL")
    if vmpl > 3:
        raise r.fail("VMPL out of range", "VMPL", offset=0x30, got=vmpl, expected="0..3")
    signature_algo = r.u32("SIGNATURE_ALGO")
    current_tcb = r.u64("CURRENT_TCB")
    platform_info = r.u64("PLATFORM_INFO")
    flags = r.u32("FLAGS")
    r.take(4, "reserved 0x4C")
    report_data = r.take(64, "REPORT_DATA")
    measurement = r.take(48, "MEASUREMENT")
    host_data = r.take(32, "HOST_DATA")
    id_key_digest = r.take(48, "ID_KEY_DIGEST")
    author_key_digest = r.take(48, "AUTHOR_KEY_DIGEST")
    report_id = r.take(32, "REPORT_ID")
    report_id_ma = r.take(32, "REPORT_ID_MA")
    reported_tcb = r.u64("REPORTED_TCB")
    fam = r.u8("CPUID_FAM_ID")
    mod = r.u8("CPUID_MOD_ID")
    step = r.u8("CPUID_STEP")
    r.take(0x1A0 - 0x18B, "reserved 0x18B")
    chip_id = r.take(64, "CHIP_ID")
    committed_tcb = r.u64("COMMITTED_TCB")
    current_build, current_minor, current_major = r.u8("CURRENT_BUILD"), r.u8("CURRENT_MINOR"), r.u8("CURRENT_MAJOR")
    r.take(1, "reserved 0x1EB")
    committed_build = r.u8("COMMITTED_BUILD")
    committed_minor = r.u8("COMMITTED_MINOR")
    committed_major = r.u8("COMMITTED_MAJOR")
    r.take(1, "reserved 0x1EF")
    launch_tcb = r.u64("LAUNCH_TCB")
    launch_mit = r.u64("LAUNCH_MIT_VECTOR")
    current_mit = r.u64("CURRENT_MIT_VECTOR")
    r.offset = SIGNATURE_OFFSET
    sig_r = r.take(R_SIZE, "SIGNATURE.R")
    sig_s = r.take(R_SIZE, "SIGNATURE.S")
    sig_reserved = r.take(REPORT_SIZE - r.offset, "SIGNATURE.reserved")
    has_cpuid = version >= 3
    has_mit = version >= 5
    if not has_cpuid and (fam or mod or step):
        raise r.fail("CPUID fields must be zero before report version 3", "CPUID_FAM_ID", offset=0x188, got=fam)
    return SnpReport(
        raw=bytes(r.data),
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb_raw=current_tcb,
        platform_info=platform_info,
        flags=flags,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb_raw=reported_tcb,
        cpuid_fam_id=fam if has_cpuid else None,
        cpuid_mod_id=mod if has_cpuid else None,
        cpuid_step=step if has_cpuid else None,
        chip_id=chip_id,
        committed_tcb_raw=committed_tcb,
        current_build=current_build,
        current_minor=current_minor,
        current_major=current_major,
        committed_build=committed_build,
        committed_minor=committed_minor,
        committed_major=committed_major,
        launch_tcb_raw=launch_tcb,
        launch_mit_vector=launch_mit if has_mit else None,
        current_mit_vector=current_mit if has_mit else None,
        signature_r=sig_r,
        signature_s=sig_s,
        signature_reserved=sig_reserved,
    )


def show_snp(report: SnpReport) -> dict:
    """Every field of the report, JSON-able, for `specguard attest show`."""
    turin = report.is_turin
    return {
        "format": "AMD SEV-SNP attestation report",
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": f"{report.policy:#x}",
        "policy_debug": report.debug,
        "policy_smt": bool(report.policy >> POLICY_SMT_BIT & 1),
        "policy_migrate_ma": bool(report.policy >> POLICY_MIGRATE_MA_BIT & 1),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "current_tcb": report.tcb("current", turin).as_dict(),
        "platform_info": f"{report.platform_info:#x}",
        "signing_key": report.signing_key,
        "author_key_en": report.author_key_en,
        "mask_chip_key": report.mask_chip_key,
        "report_data": report.report_data.hex(),
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "reported_tcb": report.tcb("reported", turin).as_dict(),
        "cpuid": None
        if report.cpuid_fam_id is None
        else {"family": report.cpuid_fam_id, "model": report.cpuid_mod_id, "stepping": report.cpuid_step},
        "chip_id": report.chip_id.hex(),
        "committed_tcb": report.tcb("committed", turin).as_dict(),
        "current_firmware": f"{report.current_major}.{report.current_minor}.{report.current_build}",
        "committed_firmware": f"{report.committed_major}.{report.committed_minor}.{report.committed_build}",
        "launch_tcb": report.tcb("launch", turin).as_dict(),
        "launch_mit_vector": report.launch_mit_vector,
        "current_mit_vector": report.current_mit_vector,
        "signature_r": report.signature_r.hex(),
        "signature_s": report.signature_s.hex(),
    }
