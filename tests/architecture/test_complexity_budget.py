"""The linter holds the line on function size: ruff's C90 (complexity > 12), PLR0913 (more than 8
arguments) and PLR0915 (more than 50 statements), thresholds in pyproject.toml, over the package and
bench/.

Functions that offended when the rules came in are listed, with their measure, in
`complexity_baseline.json` (debt to pay down). The test fails when

- a function not in the baseline offends (split it, or take an options object), or
- a listed function grows past its recorded measure, or
- a listed function no longer offends or no longer exists (remove its entry: the debt only shrinks).

After a deliberate change: `python tests/architecture/test_complexity_budget.py --write`.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE = Path(__file__).with_name("complexity_baseline.json")
FOLDERS = ("core", "plugins", "attest", "policies", "bench")
RULES = ("C901", "PLR0913", "PLR0915")
_MEASURE = re.compile(r"\((\d+) > \d+\)")


def _qualnames(path: Path) -> dict[int, str]:
    """`def` line -> dotted name of every function in `path` (methods as Class.method)."""
    names: dict[int, str] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    names[child.lineno] = name
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text("utf-8")), "")
    return names


@functools.cache
def measure() -> dict[str, dict[str, int]]:
    """{"path::function": {rule: measure}} for every offender ruff reports today."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *FOLDERS, "--select", ",".join(RULES),
                           "--output-format", "json", "--exit-zero", "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    found: dict[str, dict[str, int]] = {}
    names: dict[str, dict[int, str]] = {}
    for item in json.loads(proc.stdout):
        rel = str(Path(item["filename"]).resolve().relative_to(ROOT))
        lines = names.setdefault(rel, _qualnames(ROOT / rel))
        row = item["location"]["row"]
        function = lines.get(row, f"<line {row}>")
        value = _MEASURE.search(item["message"])
        found.setdefault(f"{rel}::{function}", {})[item["code"]] = int(value.group(1)) if value else 0
    return found


def _baseline() -> dict[str, dict[str, int]]:
    return json.loads(BASELINE.read_text("utf-8"))["debt"]


def test_no_function_outgrows_the_complexity_budget():
    debt, now = _baseline(), measure()
    new = [f"{fn} {rule}={value}" for fn, rules in sorted(now.items()) for rule, value in rules.items()
           if rule not in debt.get(fn, {})]
    grown = [f"{fn} {rule}: {debt[fn][rule]} -> {value}" for fn, rules in sorted(now.items())
             for rule, value in rules.items() if rule in debt.get(fn, {}) and value > debt[fn][rule]]
    assert not new, "new functions over the size limits (split them; thresholds in pyproject.toml):\n" + "\n".join(new)
    assert not grown, "functions in the complexity baseline grew:\n" + "\n".join(grown)


def test_the_baseline_only_shrinks():
    debt, now = _baseline(), measure()
    paid = [f"{fn} {rule}" for fn, rules in sorted(debt.items()) for rule in rules if rule not in now.get(fn, {})]
    assert not paid, ("no longer over the limit (well done): remove from tests/architecture/complexity_baseline.json "
                      "or run this file with --write:\n" + "\n".join(paid))


def test_the_baseline_counts_its_entries():
    doc = json.loads(BASELINE.read_text("utf-8"))
    assert doc["count"] == sum(len(rules) for rules in doc["debt"].values())


def write_baseline() -> None:
    measure.cache_clear()
    debt = measure()
    doc = {"about": "Functions over the ruff size limits when the rules came in (issue 19): debt, never to grow. "
                    "See tests/architecture/test_complexity_budget.py.",
           "rules": {"C901": "max-complexity 12", "PLR0913": "max-args 8", "PLR0915": "max-statements 50"},
           "count": sum(len(rules) for rules in debt.values()),
           "debt": dict(sorted(debt.items()))}
    BASELINE.write_text(json.dumps(doc, indent=1) + "\n", "utf-8")
    print(f"{BASELINE}: {doc['count']} offences in {len(debt)} functions")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/architecture/test_complexity_budget.py --write")
    write_baseline()
