"""Run a verifier with the test-only fault-injection plugin: `python -m support.fault_verifier app ARGS...`
(the standalone `specguard.consensus.verifier_app`) or `... serve ARGS...` (`specguard serve`).

Tests build the command with `fault_verifier_cmd` and its environment with `fault_env`.
"""

from __future__ import annotations

import os
import sys

from support.paths import TESTS


def fault_verifier_cmd(kind: str, *args: str) -> list[str]:
    """argv of a verifier process ("app" or "serve") with the fault-injection plugin loaded."""
    return [sys.executable, "-m", "support.fault_verifier", kind, *args]


def fault_env(behaviour: str = "honest", **extra: str) -> dict[str, str]:
    """Environment for `fault_verifier_cmd`: tests/ on PYTHONPATH and the initial behaviour."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SPECGUARD_TEST_VERIFIER_BEHAVIOUR": behaviour, **extra}


def main(argv: list[str]) -> None:
    from specguard.plugin_manager import load_plugins
    from support.fault_injection import FaultPlugin

    load_plugins().register(FaultPlugin(), name="specguard-test-fault-injection")
    kind, rest = argv[0], argv[1:]
    if kind == "app":
        from specguard.consensus.verifier_app import main as app_main

        app_main(rest)
    elif kind == "serve":
        from specguard.cli import main as cli_main

        cli_main(["serve", *rest])
    else:
        raise SystemExit(f"usage: python -m support.fault_verifier app|serve ARGS... (got {kind!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
