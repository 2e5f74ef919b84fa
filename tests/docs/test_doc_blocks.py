"""Every command or Python block in README.md and docs/*.md is run by a test as printed, or says why not.

The marker conventions are in tests/support/doc_blocks.py. These checks read the markdown and the
test files only (no model, no server).
"""

from __future__ import annotations

import ast
from pathlib import Path

from support.doc_blocks import ELSEWHERE, EXAMPLES, RUNNABLE, Block, all_blocks, blocks
from support.paths import ROOT

MIN_REASON = 12  # characters: "needs a GPU" is a reason, "todo" is not


def _problem(block: Block) -> str | None:
    if block.marker == "example":
        if (block.doc, block.marker_value) not in EXAMPLES:
            return f"{block.where}: example {block.marker_value!r} is run by no test (add it to doc_blocks.EXAMPLES)"
        return None
    if block.marker == "not-run":
        if len(block.marker_value) < MIN_REASON:
            return f"{block.where}: <!-- not-run: ... --> needs a reason, got {block.marker_value!r}"
        return None
    if (block.doc, block.first_line) in ELSEWHERE:
        return None
    if block.lang in RUNNABLE:
        return f"{block.where}: ```{block.lang} block neither run by a test (<!-- example: NAME -->) nor marked " \
               "<!-- not-run: REASON -->"
    if not block.lang and block.holds_commands():
        return f"{block.where}: untagged block holds commands; tag it (```sh, or ```text for a synopsis) and run or mark it"
    return None


def test_every_runnable_block_is_run_or_says_why_not():
    problems = [p for p in map(_problem, all_blocks()) if p]
    assert not problems, "\n".join(problems)


def test_each_named_example_is_unique_and_exists():
    seen: dict[tuple[str, str], int] = {}
    for block in all_blocks():
        if block.marker == "example":
            key = (block.doc, block.marker_value)
            seen[key] = seen.get(key, 0) + 1
    assert {k: n for k, n in seen.items() if n > 1} == {}
    assert sorted(set(EXAMPLES) - set(seen)) == [], "EXAMPLES names blocks the docs no longer have"


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text("utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_each_example_is_fetched_by_the_test_that_claims_it():
    """The test named in EXAMPLES exists and reads that very block (its name appears in the test or
    in a fixture or helper of the same file it uses)."""
    for (doc, name), node_id in EXAMPLES.items():
        file, function = node_id.split("::")
        functions = _functions(ROOT / file)
        assert function in functions, f"{node_id} does not exist"
        source = (ROOT / file).read_text("utf-8")
        assert f'"{name}"' in source and f'"{doc}"' in source, f"{file} never reads example {name!r} of {doc}"


def test_elsewhere_entries_still_match_a_block():
    firsts = {(b.doc, b.first_line) for b in all_blocks()}
    assert sorted(set(ELSEWHERE) - firsts) == [], "stale ELSEWHERE entries: the block changed; mark it in the doc"


def test_the_parser_sees_markers_and_untagged_command_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- not-run: needs an AMD SEV-SNP machine -->\n```sh\nspecguard attest collect\n```\n\n"
                   "```\nspecguard serve\n```\n<!-- example: one -->\n```python\nprint(1)\n```\n", "utf-8")
    found = [(b.line, b.lang, b.marker, b.marker_value, b.holds_commands()) for b in blocks(doc)]
    assert found == [(2, "sh", "not-run", "needs an AMD SEV-SNP machine", True), (6, "", None, "", True),
                     (10, "python", "example", "one", False)]
