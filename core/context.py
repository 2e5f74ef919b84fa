"""`NodeContext`: the typed, frozen view of a node that hooks receive.

Plugins read these fields and call the services they hold; they never attach attributes to the
node, and never probe it (`getattr(node, ...)`): a field a kind of node does not have is None
(tests/architecture/test_node_context.py keeps it so). Services (receipt issuer, response store,
metrics) are built by the node's owner and passed in.

Two constructors: `specguard.serve.node.Node` (a serving node: a NodeContext plus its admission,
engine and generator) and `NodeContext.for_verifier` (a standalone verifier,
`specguard.consensus.verifier_app`). The response store is typed by the `StoredResponses`
protocol, so this module needs nothing from the serving process above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from .keys import NodeKey, load_or_create_node_key

if TYPE_CHECKING:
    from .attest.receipts import ReceiptIssuer
    from .attest.request_defaults import RequestDefaults
    from .models import LoadedModel
    from .policies import Policy
    from .web.metrics import ServerMetrics

ROLES = ("serve", "verifier")


def consensus_args(args: Mapping[str, Any]) -> Mapping[str, Any]:
    """Command-line consensus settings, read-only (lists become tuples)."""
    return MappingProxyType({k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


class StoredResponses(Protocol):
    """Where a serving node keeps the exact bodies its receipts cover (`specguard.serve.responses.ResponseStore`)."""

    def new_token(self) -> str:
        """A fresh per-response secret."""
        ...

    def put(self, receipt_id: str, response_obj: dict[str, Any], token: str) -> None:
        """Store `response_obj`, readable with `token` only."""
        ...

    def get(self, receipt_id: str, token: str | None) -> dict[str, Any] | None:
        """The stored body if `token` is its secret, else None."""
        ...


@dataclass(frozen=True, eq=False, repr=False)
class NodeContext:
    """What a hook may read about the node it runs in."""

    #: the target model
    model: LoadedModel
    #: the loaded policy, its tables typed (`policy.attestation`, `.consensus`, `.drafter`)
    policy: Policy
    #: $SPECGUARD_HOME of this node (keys, log, stored responses)
    home: Path
    #: the node's Ed25519 identity
    node_key: NodeKey
    #: "serve" or "verifier"
    role: str = "serve"
    #: the model name clients send (None on a verifier-only node)
    served_model_name: str | None = None
    #: consensus settings from the command line: verifiers, quorum, verifier_keys, allowed_nodes
    consensus: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: the receipt issuer, or None when the node issues none
    receipts: ReceiptIssuer | None = None
    #: the response store, or None
    responses: StoredResponses | None = None
    #: the node's metrics, or None
    metrics: ServerMetrics | None = None
    #: what the node fills in for omitted request fields (signed into each receipt); None on a verifier
    request_defaults: RequestDefaults | None = None
    #: the digest of the node's own TEE evidence when known up front (None: ask the node_attestation hook)
    attestation_digest: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(role={self.role!r}, key_id={self.key_id!r}, home={str(self.home)!r})"

    @property
    def public_key_bytes(self) -> bytes:
        return self.node_key.public_bytes

    @property
    def key_id(self) -> str:
        return self.node_key.key_id

    @property
    def signing_key(self) -> Any:
        """The private key (Ed25519PrivateKey); never logged."""
        return self.node_key.private

    @classmethod
    def for_verifier(cls, model: LoadedModel, policy: Policy, home: Path, attestation_digest: str | None = None,
                     allowed_nodes: list[bytes] | tuple[bytes, ...] | None = None) -> NodeContext:
        """A verifier-only node: it issues no receipts and stores no responses; its key is `home`'s
        (created on first use); `allowed_nodes` are the serving-node keys it accepts (None: the policy's)."""
        args: dict[str, Any] = {"verifiers": (), "quorum": None}
        if allowed_nodes is not None:
            args["allowed_nodes"] = tuple(allowed_nodes)
        return cls(model=model, policy=policy, home=Path(home), node_key=load_or_create_node_key(Path(home)),
                   role="verifier", consensus=consensus_args(args), attestation_digest=attestation_digest)


__all__ = ["ROLES", "NodeContext", "StoredResponses"]
