"""SIMULATED evidence for development on machines without a TEE.

It proves nothing: no hardware signs it. It exists so the rest of the pipeline (binding,
receipts, verification) can be exercised anywhere. It is labelled SIMULATED in its bytes, in
every summary and log line, and every policy rejects it unless `[attestation] allow_simulated
= true` (the INSECURE `dev` preset). Each parse, verify and validate logs a warning.

Bytes: RFC 8785 JSON {"format": "specguard-simulated-v1", "label": LABEL,
"report_data": hex(64 bytes), "measurement": hex(48 bytes), "debug": bool}.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass

from specguard.canonical import canonical_json

from .certs import utc
from .errors import EvidenceParseError
from .types import Verified

log = logging.getLogger("specguard.attest")

FORMAT = "specguard-simulated-v1"
LABEL = "SIMULATED: not produced by a TEE; proves nothing about the machine"
SIM_MEASUREMENT = hashlib.sha384(b"specguard simulated guest").digest()


@dataclass(frozen=True)
class SimulatedReport:
    raw: bytes
    report_data: bytes
    measurement: bytes
    debug: bool


def warn(action: str) -> None:
    log.warning("SIMULATED attestation evidence %s: it is not from a TEE and proves nothing", action)


def make_simulated_report(report_data: bytes, *, debug: bool = False) -> bytes:
    """Bytes of a SIMULATED report carrying `report_data` (64 bytes)."""
    if len(report_data) != 64:
        raise EvidenceParseError("simulated report_data must be 64 bytes", field="report_data",
                                 got=len(report_data))
    warn("created")
    return canonical_json({"format": FORMAT, "label": LABEL, "report_data": report_data.hex(),
                           "measurement": SIM_MEASUREMENT.hex(), "debug": bool(debug)})


def parse_simulated(data: bytes) -> SimulatedReport:
    """Parse SIMULATED report bytes (typed error on anything else)."""
    warn("parsed")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EvidenceParseError(f"simulated report is not UTF-8 JSON: {exc}", field="simulated") from exc
    if not isinstance(doc, dict):
        raise EvidenceParseError("simulated report must be a JSON object", field="simulated")
    if doc.get("format") != FORMAT or doc.get("label") != LABEL:
        raise EvidenceParseError("not a specguard simulated report", field="format", got=str(doc.get("format")),
                                 expected=FORMAT)
    try:
        report_data = bytes.fromhex(doc["report_data"])
        measurement = bytes.fromhex(doc["measurement"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EvidenceParseError(f"simulated report field is missing or not hex: {exc}", field="report_data") from exc
    if len(report_data) != 64 or len(measurement) != 48 or not isinstance(doc.get("debug"), bool):
        raise EvidenceParseError("simulated report fields have the wrong size or type", field="report_data",
                                 got=(len(report_data), len(measurement)))
    return SimulatedReport(bytes(data), report_data, measurement, doc["debug"])


def verify_simulated(report: SimulatedReport, *, at: dt.datetime | None = None) -> Verified:
    """'Verify' a SIMULATED report: nothing can be checked; the result is marked simulated."""
    warn("accepted by verify (no cryptographic check is possible)")
    claims = {"report_data": report.report_data, "debug": report.debug, "measurement": report.measurement,
              "label": LABEL}
    return Verified("simulated", report, claims, utc(at), chain=("SIMULATED (no signer)",), simulated=True,
                    notes=(LABEL,))


def show_simulated(report: SimulatedReport) -> dict:
    return {"format": FORMAT, "label": LABEL, "SIMULATED": True, "report_data": report.report_data.hex(),
            "measurement": report.measurement.hex(), "debug": report.debug}
