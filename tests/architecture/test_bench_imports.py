"""bench/ measures the package as users get it: it imports `specguard` and its own helpers
(`bench/_*.py`), never tests/ (test support is not part of what is measured), and edits no
`sys.path` (each script runs as `python bench/NAME.py`, which puts bench/ on the path)."""

from __future__ import annotations

import ast
from pathlib import Path

from support.paths import ROOT

BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _violations(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        out += [f"{path.name}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in ("tests", "support")]
        if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys":
            out.append(f"{path.name}:{node.lineno}: touches sys.path")
        own = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
        if own.startswith("_") and not own.startswith("__") and not (BENCH / f"{own}.py").is_file():
            out.append(f"{path.name}:{node.lineno}: imports {own}, which is not in bench/")
    return out


def test_bench_imports_the_package_never_tests_and_leaves_sys_path_alone():
    assert SCRIPTS, "no bench scripts found"
    bad = [v for path in SCRIPTS for v in _violations(path)]
    assert not bad, "\n".join(bad)


def test_the_scan_sees_each_violation(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nsys.path.insert(0, 'tests')\nfrom support.servers import free_port\n"
                     "import tests.support\nfrom _missing import x\n", "utf-8")
    assert len(_violations(probe)) == 4
