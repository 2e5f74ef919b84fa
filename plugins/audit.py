"""Built-in integrity layer: audit (registered like any third-party plugin).

Adds `specguard audit run | report | simulate | calibrate` (see docs/audit.md).
"""

from __future__ import annotations

import click

from specguard.hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    from specguard.audit.commands import audit_group

    cli.add_command(audit_group)
