"""The hooks specguard calls. Every hook is documented in docs/plugins.md.

Registration hooks receive a `register` callback (as in simonw/llm) so a plugin can add any
number of things. Lifecycle hooks see one request as it flows: check_request -> on_step (each
verification step) -> seal_transcript (add evidence) -> issue_receipt (the receipts layer signs
and logs) -> judge_transcript. Offline verification walks back through verify_evidence.
Hooks that take `node` receive a `specguard.context.NodeContext` (or None outside a server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # annotations only: plugins import this module before anything else loads
    import click
    from fastapi import FastAPI

    from .attest.options import VerifyOptions
    from .context import NodeContext
    from .openai.resolved import ResolvedRequest
    from .policies import Policy
    from .transcript import Step, Transcript

#: `register(name, factory, description)` as passed to register_drafters / register_engines
Register = Callable[..., None]

hookspec = pluggy.HookspecMarker("specguard")
hookimpl = pluggy.HookimplMarker("specguard")


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the `specguard` CLI group `cli`."""


@hookspec
def register_drafters(register: Register) -> None:
    """Register drafters: `register(name, factory, description)`.

    `factory(target: LoadedModel, options: dict) -> Drafter` builds one drafter per engine.
    """


@hookspec
def register_engines(register: Register) -> None:
    """Register speculative engines: `register(name, factory, description)`.

    `factory(target: LoadedModel, drafter: Drafter, options: dict) -> Engine`.
    """


@hookspec
def register_evidence_types(register: Callable[[Any], None]) -> None:
    """Register attestation evidence types: `register(EvidenceType)`.

    An evidence type parses, verifies and validates one kind of TEE evidence
    (see specguard.attest.tee.types.EvidenceType).
    """


@hookspec
def register_routes(app: FastAPI, node: NodeContext) -> None:
    """Add HTTP routes to the FastAPI `app` of a serving `node` (specguard.serve.node.Node)."""


@hookspec(firstresult=True)
def node_attestation(node: NodeContext) -> dict[str, Any] | None:
    """The node's own attestation evidence summary, or None when no plugin provides one.

    Return `{"type", "evidence_digest", "simulated"}` for the evidence that binds the node's
    signing key (`GET /specguard/v1/attestation` serves the document). Serving nodes put it in
    receipts; verifier nodes put its digest in every vote they sign.
    """


@hookspec
def check_request(request: ResolvedRequest, policy: Policy) -> None:
    """Inspect a generation request before it runs.

    `request` is the resolved request (`specguard.openai.resolved.ResolvedRequest`): every default
    filled in and typed (`request.max_tokens` is the number that will run, whichever of
    max_tokens / max_completion_tokens / the node default set it). `policy` is the node's
    `specguard.policies.Policy`. Raise `specguard.errors.RequestError` to refuse it (HTTP 400).
    """


@hookspec
def on_step(request: ResolvedRequest, step: Step) -> None:
    """See each verification step (`specguard.transcript.Step`) of the resolved `request` as the engine makes it."""


@hookspec
def seal_transcript(transcript: Transcript, evidence: dict[str, Any], node: NodeContext | None,
                    receipt_id: str) -> None:
    """Add evidence for a finished transcript before its receipt is signed.

    `evidence` is a dict of slot name -> JSON value; set your own slot(s) in it.
    `node` is the serving node, or None when generating from the CLI. `receipt_id` is the id
    the receipt will carry (evidence may bind it, as the commitment proofs do).
    """


@hookspec(firstresult=True)
def issue_receipt(transcript: Transcript, request: dict[str, Any], response: dict[str, Any],
                  evidence: dict[str, Any], node: NodeContext, receipt_id: str) -> dict[str, Any] | None:
    """Sign and log a receipt for a finished response; return the receipt document
    (`{"receipt_id", "envelope", "log"}`) once it is durable, or None.

    `receipt_id` was chosen before `seal_transcript` (evidence such as commitment proofs binds
    it); the receipt must carry exactly this id.

    `request` is the canonical request dict, `response` the body the receipt covers (without the
    `specguard` key), `evidence` the slots `seal_transcript` filled, `node` the NodeContext. The
    built-in receipts plugin implements it with `node.receipts`; with no implementation the server
    still answers, without a receipt, and says so in /health (`"receipts": false`).
    """


@hookspec
def judge_transcript(transcript: Transcript, receipt: dict[str, Any], node: NodeContext,
                     request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any] | None:
    """Judge a finished, receipted response; return a dict to attach (e.g. a quorum
    certificate) or None. Raise a SpecguardError to fail the request.

    `request` is the canonical request object the receipt's request digest covers and
    `response` the response body its subject digest covers (without the "specguard" key), so
    judges check what the client sent and receives, not only the node's token ids."""


@hookspec(firstresult=True)
def verify_evidence(slot: str, value: Any, statement: dict[str, Any],
                    options: VerifyOptions) -> dict[str, Any] | None:
    """Verify one evidence slot of a receipt offline.

    Return a dict describing what was verified if the slot is yours, None otherwise.
    Raise a `VerificationError`/`ValidationError` subclass when it does not verify.
    `options` is a `specguard.attest.options.VerifyOptions` (trusted keys, policy, evidence files).
    """
