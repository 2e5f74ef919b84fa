"""Built-in integrity layer: receipts and the transparency log (registered like any third-party plugin).

CLI (cli.py): `specguard verify` (builds a `VerifyOptions` and passes `verify_receipt` an evidence
verifier that calls the `verify_evidence` hook), `specguard log verify`, `specguard log show`.
Routes (routes.py), served from the node's receipt issuer:
    GET /specguard/v1/log/checkpoint                      signed checkpoint note (text/plain)
    GET /specguard/v1/log/entries/{i}                     leaf i
    GET /specguard/v1/log/proof/inclusion?index=&size=    audit path
    GET /specguard/v1/log/proof/consistency?old=&new=     consistency proof
    GET /specguard/v1/receipts/{id}                       a stored receipt document
Bad or out-of-range parameters answer 400/404 with an OpenAI-shaped error body.
Issuing (`issue_receipt` hook): signs and logs each response's receipt with the node's issuer
(`node.receipts`, a specguard.attest.receipts.ReceiptIssuer the node was given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from specguard.hookspecs import hookimpl

from . import cli as cli_commands
from . import routes

if TYPE_CHECKING:
    from fastapi import FastAPI

    from specguard.context import NodeContext
    from specguard.transcript import Transcript


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(cli_commands.verify_command)
    cli.add_command(cli_commands.log_group)


@hookimpl
def register_routes(app: FastAPI, node: NodeContext) -> None:
    routes.register(app, node)


@hookimpl
def issue_receipt(transcript: Transcript, request: dict[str, Any], response: dict[str, Any], evidence: dict[str, Any],
                  node: NodeContext, receipt_id: str) -> dict[str, Any] | None:
    """Sign and log the receipt with the node's issuer; None when the node has no issuer."""
    issuer = routes.issuer_for(node)
    if issuer is None:
        return None
    return issuer.issue(transcript, request, response, evidence, node.policy, receipt_id=receipt_id,
                        request_defaults=node.request_defaults)
