"""Run the `specguard` command line in-process and capture what it printed."""

from __future__ import annotations

from typing import Any

from specguard.cli import main


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `specguard ARGS...`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
