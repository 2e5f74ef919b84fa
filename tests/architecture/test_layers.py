"""The import graph keeps the layers apart (docs/architecture.md):

- `specguard.attest` is a pure library: it imports only itself, the foundation modules of core
  (errors, canonical, keys, transcript) and no CLI, HTTP, torch or plugin-manager code;
- the foundation modules import only each other;
- `specguard` (core/) never imports `specguard.plugins`;
- no plugin imports another plugin.

Every import counts, also one inside a function (the usual way to hide a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support.paths import ROOT

PACKAGES = {"core": "specguard", "attest": "specguard.attest", "plugins": "specguard.plugins",
            "policies": "specguard.policies"}
FOUNDATION = {"specguard.errors", "specguard.canonical", "specguard.keys", "specguard.transcript"}
#: third-party packages that make a module something other than a pure evidence library
NOT_IN_ATTEST = {"click", "fastapi", "starlette", "uvicorn", "httpx", "torch", "transformers", "pluggy",
                 "specguard.plugin_manager", "specguard.hookspecs", "specguard.plugins", "specguard.serve", "specguard.web", "specguard.openai",
                 "specguard.cli", "specguard.engine", "specguard.models"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    top = PACKAGES[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([top, *parts])


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    graph = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            graph[_module_name(path)] = _imports(path)
    return graph


GRAPH = _modules()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _specguard(imports: set[str]) -> set[str]:
    return {m for m in imports if _under(m, "specguard")}


def test_the_graph_was_read():
    assert "specguard.attest.receipts" in GRAPH and "specguard.plugins.receipts" in GRAPH
    assert "specguard.errors" in GRAPH["specguard.attest.receipts.errors"]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _under(m, "specguard.attest")))
def test_attest_is_a_pure_library(module):
    bad = sorted(m for m in GRAPH[module] if any(_under(m, p) for p in NOT_IN_ATTEST))
    assert not bad, f"{module} imports {bad}: attest/ takes no CLI, HTTP, torch or plugin-manager code"
    inner = _specguard(GRAPH[module])
    outside = sorted(m for m in inner if not _under(m, "specguard.attest") and not any(_under(m, f) for f in FOUNDATION))
    assert not outside, f"{module} imports {outside}: attest/ may import only itself and {sorted(FOUNDATION)}"


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_foundation_imports_only_foundation(module):
    inner = _specguard(GRAPH[module])
    bad = sorted(m for m in inner if not any(_under(m, f) for f in FOUNDATION))
    assert not bad, f"foundation module {module} imports {bad}"


def test_core_never_imports_plugins():
    core = [m for m in GRAPH if not any(_under(m, p) for p in ("specguard.attest", "specguard.plugins",
                                                              "specguard.policies"))]
    bad = sorted((m, i) for m in core for i in GRAPH[m] if _under(i, "specguard.plugins"))
    assert not bad, f"core modules import plugins: {bad}"


def test_no_plugin_imports_another():
    layers = {m.split(".")[2] for m in GRAPH if _under(m, "specguard.plugins") and m.count(".") >= 2}
    bad = []
    for module, imports in GRAPH.items():
        if not _under(module, "specguard.plugins") or module.count(".") < 2:
            continue
        own = module.split(".")[2]
        bad += [(module, i) for i in imports for other in layers - {own} if _under(i, f"specguard.plugins.{other}")]
    assert not bad, f"plugins import each other: {bad}"


def test_each_plugin_is_a_package_of_hooks_cli_and_routes():
    for layer in sorted(p for p in (ROOT / "plugins").iterdir() if p.is_dir() and p.name != "__pycache__"):
        files = {p.name for p in layer.glob("*.py")}
        assert "__init__.py" in files, f"plugins/{layer.name} is not a package"
        assert files <= {"__init__.py", "cli.py", "routes.py"}, f"plugins/{layer.name} holds {sorted(files)}"
    assert not [p.name for p in (ROOT / "plugins").glob("*.py") if p.name != "__init__.py"], "plugin modules outside packages"


#: the only modules outside specguard.serve that may import the serving process (the top floor)
SERVE_IMPORTERS = {"specguard.cli", "specguard.__main__", "specguard.consensus.ray_pool"}


def test_serve_is_imported_only_by_the_cli():
    bad = sorted((m, i) for m, imports in GRAPH.items() if not _under(m, "specguard.serve") and m not in SERVE_IMPORTERS
                 for i in imports if _under(i, "specguard.serve"))
    assert not bad, (f"specguard.serve (the serving process, top floor) is imported by {bad}: only "
                     f"{sorted(SERVE_IMPORTERS)} may; move what they need down (context, server, engine)")


def test_the_cli_reaches_the_serving_process():
    assert "specguard.serve.cli" in GRAPH["specguard.cli"] and "specguard.serve.app" in GRAPH


#: the shared floors under the serving process, verifiers and audits, and what each may import from specguard
FLOORS = {
    "specguard.web": ("specguard.web", "specguard.errors"),
    "specguard.openai": ("specguard.openai", "specguard.web", "specguard.errors", "specguard.transcript",
                         "specguard.attest", "specguard.models"),
}


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_web_and_openai_import_nothing_above_them(floor):
    allowed = FLOORS[floor]
    modules = [m for m in GRAPH if _under(m, floor)]
    assert modules, f"{floor} has no modules"
    bad = sorted((m, i) for m in modules for i in _specguard(GRAPH[m]) if not any(_under(i, a) for a in allowed))
    assert not bad, f"{floor} imports above itself: {bad}; it may import only {sorted(allowed)}"
