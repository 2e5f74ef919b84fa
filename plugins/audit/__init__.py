"""Built-in integrity layer: audit (registered like any third-party plugin).

Adds `specguard audit run | report | simulate | calibrate` (see docs/audit.md).
"""

from __future__ import annotations

import click

from specguard.hookspecs import hookimpl

from . import cli as cli_commands


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(cli_commands.audit_group)
