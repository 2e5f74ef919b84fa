"""Test-only TEE authorities built here (never pinned by specguard): an AMD-like ARK -> ASK -> VCEK
chain that signs synthetic SEV-SNP reports, an NVIDIA-like root -> GPU leaf chain that signs synthetic
SPDM GET_MEASUREMENTS evidence, and CRLs signed by these test CAs. Callers pass `.trust` explicitly."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from specguard.attest.tee import roots

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 1, tzinfo=UTC)
AMD = "1.3.6.1.4.1.3704.1"
FWID_OID = "2.23.133.5.4.1"
MEASUREMENT = bytes(range(48))
CHIP_ID = bytes(range(64, 128))
GUEST_POLICY = 0x30000
#: VBIOS bytes that NVIDIA's format renders as 96.00.9F.00.01
VBIOS_RAW = bytes([0x00, 0x9F, 0x00, 0x96, 0x01, 0x00, 0x00, 0x00])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(subject, issuer, key, signer, *, ca, not_after=dt.datetime(2030, 1, 1, tzinfo=UTC), extensions=()):
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=UTC)).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    for oid, value in extensions:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return b.sign(signer, hashes.SHA384())


def make_crl(issuer: x509.Certificate, key, revoked=(), *, last=dt.datetime(2025, 1, 1, tzinfo=UTC),
             next_update=dt.datetime(2026, 1, 1, tzinfo=UTC)) -> x509.CertificateRevocationList:
    """A CRL signed by a test CA, listing the serial numbers in `revoked`."""
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(last).next_update(next_update)
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(last).build())
    return b.sign(key, hashes.SHA384())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


class FakeAmdCA:
    """ARK -> ASK -> VCEK, all ECDSA P-384, VCEK with the AMD TCB/hwID extensions."""

    def __init__(self, tcb=(3, 0, 8, 115), vcek_not_after=dt.datetime(2030, 1, 1, tzinfo=UTC)):
        self.ark_key = ec.generate_private_key(ec.SECP384R1())
        self.ask_key = ec.generate_private_key(ec.SECP384R1())
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.ark = make_cert("ARK-Test", "ARK-Test", self.ark_key, self.ark_key, ca=True)
        self.ask = make_cert("SEV-Test", "ARK-Test", self.ask_key, self.ark_key, ca=True)
        bl, tee, snp, ucode = tcb
        ext = [(AMD + ".2", b"\x16\x08Milan-B0"), (AMD + ".3.1", bytes([2, 1, bl])), (AMD + ".3.2", bytes([2, 1, tee])),
               (AMD + ".3.3", bytes([2, 1, snp])), (AMD + ".3.8", bytes([2, 1, ucode])), (AMD + ".4", CHIP_ID)]
        self.vcek = make_cert("SEV-VCEK", "SEV-Test", self.vcek_key, self.ask_key, ca=False, not_after=vcek_not_after,
                              extensions=ext)
        self.trust = roots.custom([self.ark], [self.ask])

    def report(self, *, report_data=bytes(64), debug=False, vmpl=0, guest_svn=2, measurement=MEASUREMENT,
               host_data=bytes(32), tcb=(3, 0, 8, 115), chip_id=CHIP_ID) -> bytes:
        buf = bytearray(0x4A0)
        buf[0:4] = (2).to_bytes(4, "little")
        buf[4:8] = guest_svn.to_bytes(4, "little")
        buf[8:16] = (GUEST_POLICY | (1 << 19 if debug else 0)).to_bytes(8, "little")
        buf[0x30:0x34] = vmpl.to_bytes(4, "little")
        buf[0x34:0x38] = (1).to_bytes(4, "little")
        bl, tee, snp, ucode = tcb
        for off in (0x38, 0x180, 0x1E0, 0x1F0):
            buf[off : off + 8] = bytes([bl, tee, 0, 0, 0, 0, snp, ucode])
        buf[0x50:0x90] = report_data
        buf[0x90:0xC0] = measurement
        buf[0xC0:0xE0] = host_data
        buf[0x1A0:0x1E0] = chip_id
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(buf[:0x2A0]), ec.ECDSA(hashes.SHA384())))
        buf[0x2A0:0x2E8] = r.to_bytes(72, "little")
        buf[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(buf)

    def reference_values(self) -> dict:
        """Reference values this CA's default reports match."""
        return {"name": "fake-amd", "snp": {"measurements": [MEASUREMENT.hex()], "guest_policies": [hex(GUEST_POLICY)],
                                            "vmpl": 0, "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8,
                                                                   "microcode": 115}}}


def _tlv(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


class FakeNvidia:
    """NVIDIA-like device root -> GPU attestation leaf (with a TCG DICE FWID) signing SPDM evidence."""

    def __init__(self):
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.fwid = bytes(range(100, 148))
        self.root = make_cert("NV-Root-Test", "NV-Root-Test", self.root_key, self.root_key, ca=True)
        self.leaf = make_cert("GH100 Test GSP FMC LF", "NV-Root-Test", self.leaf_key, self.root_key, ca=False,
                              extensions=[(FWID_OID, b"\x30\x04dice" + self.fwid)])
        self.trust = roots.custom([self.root])
        self.chain = pem(self.leaf, self.root)

    def evidence(self, nonce: bytes, *, fwid: bool = True, driver: str = "550.90.07") -> bytes:
        """SPDM 1.1 GET_MEASUREMENTS request (with `nonce`) || signed MEASUREMENTS response."""
        request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + bytes([0])
        value = bytes(range(48))
        block = bytes([1, 1]) + (3 + len(value)).to_bytes(2, "little") + bytes([0]) + len(value).to_bytes(2, "little")
        block += value
        opaque = _tlv(3, driver.encode() + b"\x00") + _tlv(6, VBIOS_RAW) + (_tlv(20, self.fwid) if fwid else b"")
        response = (bytes([0x11, 0x60, 0, 0, 1]) + len(block).to_bytes(3, "little") + block + bytes(32)
                    + len(opaque).to_bytes(2, "little") + opaque)
        signed = request + response
        r, s = decode_dss_signature(self.leaf_key.sign(signed, ec.ECDSA(hashes.SHA384())))
        return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    def reference_values(self) -> dict:
        return {"driver_versions": ["550.90.07"], "vbios_versions": ["96.00.9F.00.01"]}
