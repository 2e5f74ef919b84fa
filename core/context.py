"""`NodeContext`: the typed view of a node that hooks receive.

Plugins read these fields and call the services they hold; they never attach attributes to the
node. Services (receipt issuer, response store, metrics) are built by the node's owner and
passed in (`Node(..., receipts=..., responses=...)`). `specguard.node.Node` (serving) and
`specguard.consensus.verifier_app.VerifierNode` (standalone verifier) implement it; a field a
kind of node does not have is None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .keys import NodeKey


@runtime_checkable
class NodeContext(Protocol):
    """What a hook may read about the node it runs in."""

    #: the target model (specguard.models.LoadedModel)
    model: Any
    #: the loaded policy (specguard.policies.Policy)
    policy: Any
    #: $SPECGUARD_HOME of this node (keys, log, stored responses)
    home: Path
    #: the node's Ed25519 identity, and its public half / key id
    node_key: NodeKey
    public_key_bytes: bytes
    key_id: str
    #: "serve" or "verifier"
    role: str
    #: the model name clients send (None on a verifier-only node)
    served_model_name: str | None
    #: consensus settings from the command line: {"verifiers": [...], "quorum": q}
    consensus: dict[str, Any]
    #: the receipt issuer (specguard.attest.receipts.ReceiptIssuer), or None when the node issues none
    receipts: Any
    #: the response store (specguard.node.ResponseStore), or None
    responses: Any
    #: the node's metrics (specguard.server.metrics.ServerMetrics), or None
    metrics: Any


__all__ = ["NodeContext"]
