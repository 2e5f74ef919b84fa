"""CLI commands of the server: `specguard serve`."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add the server's commands to the CLI group."""
