"""A node's own TEE evidence, bound to its signing key: fresh for a nonce, or cached for sealing receipts.

SIMULATED evidence is produced unless the node's policy requires real attestation, and every use of
it is logged as proving nothing."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .attest.binding import seal_nonce
from .attest.tee.document import EvidenceDocument

if TYPE_CHECKING:
    from .context import NodeContext

log = logging.getLogger("specguard.attest")

#: evidence each node's receipts reference, keyed by the node's key_id
_SEALED: dict[str, EvidenceDocument] = {}


def allow_simulated(node: NodeContext) -> bool:
    """SIMULATED evidence is produced unless the node's policy requires real attestation."""
    from .attest.tee.validate import section_of

    section = section_of(node.policy) if node.policy is not None else None
    return section is None or section.allow_simulated or not section.required


def node_evidence(node: NodeContext, nonce: bytes | None = None) -> EvidenceDocument:
    """Fresh evidence for `nonce`, or (nonce None) the node's cached sealing evidence."""
    from specguard.attest.tee.collect import collect_evidence

    if nonce is not None:
        return collect_evidence(node.public_key_bytes, nonce, allow_simulated=allow_simulated(node))
    key = str(node.key_id)
    if key not in _SEALED:
        _SEALED[key] = collect_evidence(node.public_key_bytes, seal_nonce(node.public_key_bytes),
                                        allow_simulated=allow_simulated(node))
    doc = _SEALED[key]
    if doc.simulated:
        log.warning("SIMULATED attestation evidence used for node %s: it proves nothing", key)
    return doc
