"""The `specguard` command line. Plugins add commands through the `register_commands` hook."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from . import __version__
from .errors import SpecguardError
from .plugin_manager import get_plugins, load_plugins, pm


@click.group()
@click.version_option(__version__, prog_name="specguard")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """specguard: verifiable LLM inference with lossless speculative decoding."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command(name="plugins")
def plugins_command() -> None:
    """List loaded plugins and the hooks each implements, as JSON."""
    click.echo(json.dumps(get_plugins(), indent=2))


def _register_plugin_commands() -> None:
    load_plugins()
    pm.hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; a SpecguardError prints one clear line and exits non-zero."""
    try:
        _register_plugin_commands()
        cli.main(args=argv, prog_name="specguard", standalone_mode=False)
    except SpecguardError as exc:
        if os.environ.get("SPECGUARD_DEBUG"):
            raise
        click.echo(f"Error: {exc.summary()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
