"""Every hook specification and every built-in implementation is fully annotated (issue 19), as
pytest annotates its hookspecs: a plugin author reads the types, not the implementations."""

from __future__ import annotations

import ast

import pytest
from support.paths import ROOT


def _hook_functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for folder in ("core", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if any("hookimpl" in ast.unparse(d) or "hookspec" in ast.unparse(d) for d in node.decorator_list):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node))
    return found


HOOKS = _hook_functions()


def _missing(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = [a for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
    missing = [a.arg for a in args if a.annotation is None]
    return missing + (["return"] if node.returns is None else [])


def test_the_scan_finds_specs_and_implementations():
    names = [where for where, _ in HOOKS]
    assert any(w.startswith("core/hookspecs.py") for w in names) and any(w.startswith("plugins/") for w in names)


@pytest.mark.parametrize("where,node", HOOKS, ids=[where for where, _ in HOOKS])
def test_every_hook_is_annotated(where: str, node: ast.FunctionDef | ast.AsyncFunctionDef):
    assert not _missing(node), f"{where} lacks annotations for {_missing(node)}"


def test_a_missing_annotation_is_caught():
    node = ast.parse("@hookimpl\ndef check_request(request, node) -> None: ...").body[0]
    assert _missing(node) == ["request", "node"]


