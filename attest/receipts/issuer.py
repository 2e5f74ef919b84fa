"""The receipt issuer: signs each response's statement with the node key and logs it durably."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...canonical import canonical_json
from ...keys import NodeKey
from ...transcript import Transcript
from .. import dsse
from ..request_defaults import RequestDefaults
from ..tlog import LOG_FILE, Appended, TransparencyLog
from .statement import Issuance, build_statement, sealed_part
from .wire import DISCLOSURE_KEY, RECEIPT_ID_RE, new_receipt_secret


def default_origin(key: NodeKey) -> str:
    """The log origin (and checkpoint key name) a node uses unless configured otherwise."""
    return "specguard/node-" + key.key_id.split(":", 1)[1]


class ReceiptIssuer:
    """Signs receipts with the node key and appends them durably to the node's log.

    The log lives at `home`/log/log.sqlite3; stored receipts survive restarts.
    """

    def __init__(self, home: Path, key: NodeKey, origin: str | None = None) -> None:
        self.home = Path(home)
        self.key = key
        self.origin = origin or default_origin(key)
        self.log = TransparencyLog(self.home / "log" / LOG_FILE, self.origin, key)

    def issue(self, transcript: Transcript, request_obj: dict[str, Any], response_obj: dict[str, Any],
              evidence: dict[str, Any], policy: Any, *, receipt_id: str | None = None,
              request_defaults: RequestDefaults | None = None) -> dict[str, Any]:
        """Build, sign and log one receipt; return the requester's receipt document once it is durable.

        `receipt_id` is the id chosen before sealing (evidence may bind it); a fresh one if None.
        The receipt secret is `transcript.salt`; when it is empty a fresh one is set here (the server
        sets it before `seal_transcript`, since evidence binds the salted binding digest). The
        log stores (and serves) the public document; the returned one adds the `disclosure`
        ({"secret", "sealed"}) only the requester gets.
        """
        if not transcript.salt:  # evidence sealed before this bound the unsalted binding digest
            transcript.salt = new_receipt_secret()
        statement = build_statement(transcript, request_obj, response_obj, evidence, policy, self.key,
                                    Issuance(receipt_id=receipt_id, request_defaults=request_defaults))
        envelope = dsse.sign_envelope(canonical_json(statement), self.key)
        receipt_id = statement["predicate"]["receipt_id"]
        out: dict[str, Any] = {}

        def attach(appended: Appended) -> tuple[str, bytes]:
            out.update(receipt_document(receipt_id, envelope, self.origin, appended))
            return receipt_id, canonical_json(out)

        self.log.append(canonical_json(envelope), attach)
        out[DISCLOSURE_KEY] = {"secret": transcript.salt, "sealed": sealed_part(transcript)}
        return out

    def get_receipt(self, receipt_id: str) -> dict[str, Any] | None:
        """A previously issued receipt document, or None."""
        if not isinstance(receipt_id, str) or not RECEIPT_ID_RE.fullmatch(receipt_id):
            return None
        return self.log.get_receipt(receipt_id)

    def close(self) -> None:
        self.log.close()


def receipt_document(receipt_id: str, envelope: dict[str, Any], origin: str, appended: Appended) -> dict[str, Any]:
    """The receipt document for a logged envelope: id, envelope, and where the log holds it."""
    return {
        "receipt_id": receipt_id,
        "envelope": envelope,
        "log": {
            "origin": origin,
            "index": appended.index,
            "tree_size": appended.tree_size,
            "inclusion_proof": [h.hex() for h in appended.inclusion_proof],
            "checkpoint": appended.checkpoint,
        },
    }
