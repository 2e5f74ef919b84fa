"""The plugin manager: built-ins load like third-party plugins.

Built-in plugins are listed in DEFAULT_PLUGINS. Third-party plugins load from the entry-point
group `specguard`. `SPECGUARD_LOAD_PLUGINS` (comma-separated) restricts which load: a built-in
module name (or its last component), or a third-party plugin's distribution name or entry-point
name; a name that matches no plugin is an error. An empty value loads none but the core.
`SPECGUARD_NO_ENTRYPOINTS=1` loads only the built-ins. `SPECGUARD_TRACE_HOOKS=1` prints every
hook call to stderr.

Every registration is checked at once: a hook implementation whose name is not a specguard hook
(a misspelling such as `check_requests`) or whose arguments the hook does not offer is a
`PluginError` naming the plugin and the closest hook. A third-party plugin that fails to import
or to register is skipped with one line on stderr, so `specguard --help` and unrelated commands
keep working; `specguard serve` refuses to start while any plugin failed (`require_all_loaded`),
because a node silently missing a policy plugin would serve what the operator meant to refuse.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from dataclasses import dataclass
from importlib import metadata
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
ENTRY_POINT_GROUP = "specguard"

#: every hook a plugin may implement
HOOK_NAMES: frozenset[str] = frozenset(
    name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "specguard_spec"))


@dataclass(frozen=True)
class LoadFailure:
    """A third-party plugin that was skipped: which, and why (one line)."""

    name: str
    distribution: str | None
    reason: str

    def line(self) -> str:
        where = f" (distribution {self.distribution})" if self.distribution else ""
        return f"specguard: plugin {self.name!r}{where} not loaded: {self.reason}"


class SpecguardPluginManager(pluggy.PluginManager):
    """A pluggy manager that refuses unknown hooks and wrong hook arguments when a plugin registers."""

    def register(self, plugin: object, name: str | None = None) -> str | None:
        shown = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        _check_hook_names(plugin, shown, self)
        try:
            return super().register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {shown!r} cannot register: {exc}", field="plugin", got=shown,
                              expected="hook implementations matching specguard.hookspecs") from None


def _check_hook_names(plugin: object, shown: str, manager: pluggy.PluginManager) -> None:
    for attr in dir(plugin):
        try:
            opts = manager.parse_hookimpl_opts(plugin, attr)
        except Exception:  # an attribute that cannot be inspected is not a hook implementation
            continue
        if opts is None:
            continue
        hook = opts.get("specname") or attr
        if hook in HOOK_NAMES or opts.get("optionalhook"):
            continue
        close = difflib.get_close_matches(hook, sorted(HOOK_NAMES), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PluginError(f"plugin {shown!r} implements unknown hook {hook!r}{hint}", field=f"{shown}.{attr}",
                          got=hook, expected=close[0] if close else "a hook in specguard.hookspecs")


pm = SpecguardPluginManager("specguard")
pm.add_hookspecs(hookspecs)

_loaded = False
#: plugins skipped while loading (import failed, unknown hook, bad arguments)
load_failures: list[LoadFailure] = []
#: registered third-party plugin -> its distribution (name, version)
_distributions: dict[int, tuple[str, str]] = {}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed() -> set[str] | None:
    raw = os.environ.get("SPECGUARD_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    if sys.flags.ignore_environment or os.environ.get("SPECGUARD_NO_ENTRYPOINTS") == "1":
        return []
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return None if dist is None else dist.metadata["name"]


def _builtin_matches(name: str, wanted: str) -> bool:
    return wanted in (name, name.rsplit(".", 1)[-1])


def _entry_point_matches(ep: metadata.EntryPoint, wanted: str) -> bool:
    dist = _dist_name(ep)
    return wanted == ep.name or wanted == ep.value or (dist is not None and _normalize(wanted) == _normalize(dist))


def _check_allowed_names(allowed: set[str], entry_points: list[metadata.EntryPoint]) -> None:
    unknown = sorted(w for w in allowed
                     if not any(_builtin_matches(n, w) for n in DEFAULT_PLUGINS)
                     and not any(_entry_point_matches(ep, w) for ep in entry_points))
    if unknown:
        known = sorted({n.rsplit(".", 1)[-1] for n in DEFAULT_PLUGINS}
                       | {_dist_name(ep) or ep.name for ep in entry_points})
        raise PluginError("SPECGUARD_LOAD_PLUGINS names a plugin that is not installed",
                          field="SPECGUARD_LOAD_PLUGINS", got=",".join(unknown),
                          expected="built-in or installed plugin names: " + ", ".join(known))


def load_plugins() -> pluggy.PluginManager:
    """Load built-in and installed plugins once; return the manager."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    allowed = _allowed()
    entry_points = _entry_points()
    if allowed is not None:
        _check_allowed_names(allowed, entry_points)
    for name in DEFAULT_PLUGINS:
        if allowed is not None and not any(_builtin_matches(name, w) for w in allowed):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a broken built-in is a bug; say which
            raise PluginError(f"built-in plugin {name} failed to import: {exc}") from exc
        pm.register(module, name=name)
    for ep in entry_points:
        if allowed is not None and not any(_entry_point_matches(ep, w) for w in allowed):
            continue
        _load_entry_point(ep)
    if os.environ.get("SPECGUARD_TRACE_HOOKS"):
        _enable_tracing()
    return pm


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    """Import and register one third-party plugin; a failure is recorded and printed in one line."""
    dist = _dist_name(ep)
    if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
        return
    try:
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
    except Exception as exc:  # any failure in foreign code: skip it, say which plugin and why, in one line
        reason = exc.summary() if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
        failure = LoadFailure(ep.name, dist, " ".join(reason.split())[:300])
        load_failures.append(failure)
        print(failure.line(), file=sys.stderr)
        return
    if dist is not None:
        version = getattr(ep, "dist", None) and ep.dist.version  # type: ignore[union-attr]
        _distributions[id(plugin)] = (dist, str(version))


def require_all_loaded() -> None:
    """Raise PluginError when any installed plugin was skipped (a node must not serve without it)."""
    load_plugins()
    if load_failures:
        raise PluginError("refusing to serve: a plugin failed to load (fix or uninstall it, or leave it out with "
                          "SPECGUARD_LOAD_PLUGINS)", field="plugins",
                          got="; ".join(f"{f.name}: {f.reason}" for f in load_failures),
                          expected="every installed plugin loaded")


def _enable_tracing() -> None:
    def before(hook_name: str, hook_impls: list, kwargs: dict[str, Any]) -> None:
        names = [impl.plugin_name for impl in hook_impls]
        print(f"[specguard hook] {hook_name} -> {names} args={sorted(kwargs)}", file=sys.stderr)

    def after(outcome: Any, hook_name: str, hook_impls: list, kwargs: dict[str, Any]) -> None:
        return None

    pm.add_hookcall_monitoring(before, after)


def get_plugins() -> list[dict[str, Any]]:
    """Every registered plugin with its hooks, and every skipped one with its error, for `specguard plugins`."""
    load_plugins()
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        entry: dict[str, Any] = {"name": name, "hooks": hooks}
        dist = _distributions.get(id(plugin))
        if dist is not None:
            entry["distribution"], entry["version"] = dist
        entry["builtin"] = name in DEFAULT_PLUGINS
        entry["loaded"] = True
        out.append(entry)
    for failure in load_failures:  # skipped plugins are listed too, with why
        out.append({"name": failure.name, "hooks": [], "builtin": False, "loaded": False,
                    "distribution": failure.distribution, "error": failure.reason})
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
