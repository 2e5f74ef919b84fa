"""The plugin manager: built-ins load like third-party plugins.

Built-in plugins are listed in DEFAULT_PLUGINS. Third-party plugins load from the entry-point
group `specguard`. `SPECGUARD_LOAD_PLUGINS` (comma-separated module or distribution names)
restricts which load; an empty value loads none but the core. `SPECGUARD_TRACE_HOOKS=1`
prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "specguard.drafters.builtin",
    "specguard.drafters.remote",
    "specguard.engine.builtin",
    "specguard.plugins.receipts",
    "specguard.plugins.attestation",
    "specguard.plugins.commitments",
    "specguard.plugins.consensus",
    "specguard.plugins.audit",
)

pm = pluggy.PluginManager("specguard")
pm.add_hookspecs(hookspecs)

_loaded = False


def _allowed() -> set[str] | None:
    raw = os.environ.get("SPECGUARD_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load built-in and installed plugins once; return the manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    allowed = _allowed()
    for name in DEFAULT_PLUGINS:
        if allowed is not None and name not in allowed and name.rsplit(".", 1)[-1] not in allowed:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a broken built-in is a bug; say which
            raise PluginError(f"built-in plugin {name} failed to import: {exc}") from exc
        pm.register(module, name=name)
    if not sys.flags.ignore_environment and os.environ.get("SPECGUARD_NO_ENTRYPOINTS") != "1":
        if allowed is None:
            pm.load_setuptools_entrypoints("specguard")
        else:
            for dist_name in allowed:
                pm.load_setuptools_entrypoints("specguard", name=dist_name)
    if os.environ.get("SPECGUARD_TRACE_HOOKS"):
        _enable_tracing()
    return pm


def _enable_tracing() -> None:
    def before(hook_name: str, hook_impls: list, kwargs: dict[str, Any]) -> None:
        names = [impl.plugin_name for impl in hook_impls]
        print(f"[specguard hook] {hook_name} -> {names} args={sorted(kwargs)}", file=sys.stderr)

    def after(outcome: Any, hook_name: str, hook_impls: list, kwargs: dict[str, Any]) -> None:
        return None

    pm.add_hookcall_monitoring(before, after)


def get_plugins() -> list[dict[str, Any]]:
    """Every registered plugin with its hooks, for `specguard plugins`."""
    load_plugins()
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        entry: dict[str, Any] = {"name": name, "hooks": hooks}
        dist = pm.get_plugins() and dict(pm.list_plugin_distinfo()).get(plugin)
        if dist is not None:
            entry["version"] = dist.version
            entry["distribution"] = dist.project_name
        entry["builtin"] = name in DEFAULT_PLUGINS
        out.append(entry)
    out.sort(key=lambda e: (not e["builtin"], e["name"]))
    return out


def collect(hook_name: str) -> dict[str, tuple[Any, str]]:
    """Call a `register_*` hook and return {name: (factory, description)}."""
    load_plugins()
    found: dict[str, tuple[Any, str]] = {}

    def register(name: str, factory: Any, description: str = "") -> None:
        if name in found:
            raise PluginError(f"two plugins register the same name {name!r} in {hook_name}")
        found[name] = (factory, description)

    getattr(pm.hook, hook_name)(register=register)
    return found


def registered_evidence_types() -> dict[str, Any]:
    """Every evidence type plugins register (`register_evidence_types`), indexed by name.

    The attest library takes this index as a parameter (`verify_document(..., types=)`); it never
    calls the plugin manager itself.
    """
    from .attest.tee.registry import evidence_types

    collected: list[Any] = []
    load_plugins().hook.register_evidence_types(register=collected.append)
    return evidence_types(collected)
