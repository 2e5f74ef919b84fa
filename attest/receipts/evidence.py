"""Evidence slots and attachments of a receipt, each checked by the caller's evidence verifier."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import SpecguardError, ValidationError, VerificationError
from ..options import EvidenceVerifier, VerifyOptions
from .errors import EvidenceError, MissingEvidenceError


def evidence_layer(name: str, result: Any) -> dict[str, Any]:
    """A layer entry for one evidence result: "unchecked" when no verifier claimed the slot or the
    verifier says it could not check it (e.g. no evidence file given), never a silent "ok"."""
    if result == "unchecked":
        return {"layer": name, "status": "unchecked", "detail": "no verifier for this slot"}
    if isinstance(result, dict) and result.get("checked") is False:
        return {"layer": name, "status": "unchecked", "detail": str(result.get("reason") or "not checked")}
    return {"layer": name, "status": "ok", "detail": "verified"}


def require_layers(options: VerifyOptions, results: dict[str, Any]) -> None:
    """Each slot the options require must be in the receipt and verified by a verifier."""
    for slot, asked_by in sorted(options.required_slots().items()):
        if slot not in results:
            raise MissingEvidenceError(f"{asked_by} requires the {slot!r} layer, but the receipt has none",
                                       field=f"evidence.{slot}" if slot != "consensus" else "receipt.consensus",
                                       got=sorted(results) or None, expected=slot)
        result = results[slot]
        if result == "unchecked" or (isinstance(result, dict) and result.get("checked") is False):
            reason = result.get("reason") if isinstance(result, dict) else "no verifier claims this slot"
            raise MissingEvidenceError(f"{asked_by} requires the {slot!r} layer, but it was not verified: {reason}",
                                       field=f"evidence.{slot}", got="unchecked", expected="verified")


def verify_evidence(evidence: dict[str, Any], statement: dict[str, Any], options: VerifyOptions,
                    verifier: EvidenceVerifier | None) -> dict[str, Any]:
    """{slot: result} for each slot of `evidence` ("unchecked" when no verifier claims it); a failing
    verifier's error is an EvidenceError (exit 14) unless it already names its own layer."""
    results: dict[str, Any] = {}
    for slot in sorted(evidence):
        if verifier is None:
            results[slot] = "unchecked"
            continue
        try:
            result = verifier(slot, evidence[slot], statement, options)
        except ValidationError:
            raise
        except VerificationError as exc:
            if type(exc).exit_code == VerificationError.exit_code:
                raise EvidenceError(f"evidence slot {slot!r}: {exc.message}", field=exc.field or f"evidence.{slot}",
                                    got=exc.got, expected=exc.expected) from exc
            raise
        except SpecguardError:
            raise
        except Exception as exc:  # a plugin bug must not pass as success
            raise EvidenceError(f"evidence slot {slot!r}: verifier crashed ({type(exc).__name__}: {exc})",
                                field=f"evidence.{slot}") from exc
        results[slot] = "unchecked" if result is None else result
    return results


def check_evidence(doc: dict[str, Any], statement: dict[str, Any], options: VerifyOptions,
                   verifier: EvidenceVerifier | None, attachments: frozenset[str]) -> tuple[list[dict[str, Any]],
                                                                                          dict[str, Any]]:
    """(layer entries, results) of the signed evidence slots and of the `attachments` outside the
    signature; then every layer the options require must be present and verified, never "unchecked"."""
    results = verify_evidence(statement["predicate"]["evidence"], statement, options, verifier)
    layers = [evidence_layer(f"evidence:{slot}", result) for slot, result in results.items()]
    # Attachments (e.g. a quorum certificate) bind the signed envelope's digest: their verifier gets it too.
    attached = {k: doc[k] for k in sorted(attachments) if k in doc}
    attached_results: dict[str, Any] = {}
    if attached:
        attached_results = verify_evidence(attached, statement, replace(options, envelope=doc["envelope"]), verifier)
        layers.extend(evidence_layer(f"attachment:{slot}", result) for slot, result in attached_results.items())
    require_layers(options, attached_results | results)
    return layers, results | {f"attachment:{k}": v for k, v in attached_results.items()}
