"""A test plugin standing in for a consensus judge that refuses: responses asked with
`max_tokens` == WITHHOLD_MAX_TOKENS are withheld (ConsensusWithheldError, HTTP 422), all others
pass. Loaded into a real `specguard serve` process by `plugin_serve_cmd`."""

from __future__ import annotations

import sys
from pathlib import Path

from specguard.consensus.config import ConsensusWithheldError
from specguard.hookspecs import hookimpl

WITHHOLD_MAX_TOKENS = 7


@hookimpl
def judge_transcript(transcript, receipt, node):
    if transcript.params.max_tokens == WITHHOLD_MAX_TOKENS:
        raise ConsensusWithheldError("no consensus quorum (test judge): response withheld", field="consensus",
                                     got=0, expected=">= 1")
    return {"test_judge": "accepted"}


def plugin_serve_cmd(*args: str, plugin: str = "support.withhold_plugin") -> list[str]:
    """argv running `specguard *args` with `plugin` registered first (tests/ goes on sys.path)."""
    tests_dir = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys, importlib; sys.path.insert(0, {tests_dir!r}); from specguard.plugin_manager import pm; "
            f"pm.register(importlib.import_module({plugin!r}), name='test-plugin'); "
            "from specguard.cli import main; sys.argv = ['specguard', *sys.argv[1:]]; main()")
    return [sys.executable, "-c", code, *args]
