"""`specguard.testing` (core/testing/) holds the process and response helpers that tests/ and
bench/ share. It ships in the package so bench/ can import it without reaching into tests/, but no
code path of the package may use it: nothing under core/, plugins/, attest/ or policies/ imports it
(a relative import counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

from support.paths import ROOT

FOLDERS = ("core", "plugins", "attest", "policies")
TESTING = ROOT / "core" / "testing"


def _package_of(path: Path) -> list[str]:
    """The dotted package `path` sits in, as its parts (core/ is `specguard`)."""
    rel = path.relative_to(ROOT).parent.parts
    top = ["specguard"] if rel[0] == "core" else ["specguard", rel[0]]
    return top + list(rel[1:])


def _testing_imports(source: str, package: list[str]) -> list[int]:
    """Lines of `source` (a module in `package`) that import specguard.testing or a module in it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "specguard.testing" or n.startswith("specguard.testing.") for n in names):
            lines.append(node.lineno)
    return lines


def test_no_package_code_imports_the_testing_helpers():
    paths = [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py")) if TESTING not in p.parents]
    assert len(paths) > 50, "the package's files were not found"
    bad = [f"{path.relative_to(ROOT)}:{line}" for path in paths
           for line in _testing_imports(path.read_text("utf-8"), _package_of(path))]
    assert not bad, "package code imports specguard.testing (tests/ and bench/ only):\n" + "\n".join(bad)


def test_the_scan_sees_absolute_and_relative_imports():
    source = ("import specguard.testing.processes\nfrom ..testing import responses\nfrom .. import testing\n"
              "from specguard.server import format\nfrom . import testing\n")
    assert _testing_imports(source, ["specguard", "engine"]) == [1, 2, 3]
    assert _package_of(ROOT / "plugins" / "audit" / "cli.py") == ["specguard", "plugins", "audit"]
