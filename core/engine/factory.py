"""Build a drafter and an engine by name through the plugin registries.

`make_engine` checks that what an engine factory returns satisfies the `Engine` protocol
(specguard.engine.interface) and raises PluginError otherwise, so a broken adapter fails at
construction with its name, not in the middle of a request.
"""

from __future__ import annotations

from typing import Any

from ..drafters.base import Drafter
from ..errors import UsageError
from ..models import LoadedModel
from ..plugin_manager import collect
from .interface import Engine, check_engine


def drafter_names() -> list[str]:
    return sorted(collect("register_drafters"))


#: built-in engines and drafters that compute with the target's torch weights
TORCH_ENGINES = frozenset({"specguard", "builtin", "transformers"})
TORCH_DRAFTERS = frozenset({"early-exit"})


def check_torch_target(target: LoadedModel, what: str, name: str) -> None:
    """A UsageError when `name` needs torch weights and `target` is loaded by another runtime (llama.cpp)."""
    runtime = getattr(target, "runtime", "torch")
    if runtime != "torch":
        raise UsageError(f"the {name} {what} computes with torch weights; the model is loaded by the {runtime} "
                         "runtime", field=what, got=name,
                         expected="engine llamacpp (or load the model with the torch runtime)")


def make_drafter(name: str, target: LoadedModel, options: dict[str, Any] | None = None) -> Drafter:
    drafters = collect("register_drafters")
    if name not in drafters:
        raise UsageError("unknown drafter", field="drafter", got=name, expected=sorted(drafters))
    if name in TORCH_DRAFTERS:
        check_torch_target(target, "drafter", name)
    factory, _ = drafters[name]
    return factory(target, dict(options or {}))


def runtime_for_engine(name: str) -> str:
    """The runtime a command loads the model with for engine `name`: llamacpp for the llamacpp engine
    (no torch weights), torch for every other."""
    return "llamacpp" if name == "llamacpp" else "torch"


def engine_names() -> list[str]:
    return sorted(collect("register_engines"))


def check_engine_name(name: str) -> None:
    """Raise a UsageError listing the registered engines unless `name` is one (before loading a model)."""
    engines = engine_names()
    if name not in engines:
        raise UsageError("unknown engine", field="engine", got=name, expected=engines)


def make_engine(
    target: LoadedModel, drafter: Drafter, name: str = "specguard", options: dict[str, Any] | None = None
) -> Engine:
    """The engine registered as `name`, built for `target` with `drafter` (one per request)."""
    engines = collect("register_engines")
    if name not in engines:
        raise UsageError("unknown engine", field="engine", got=name, expected=sorted(engines))
    if name in TORCH_ENGINES:
        check_torch_target(target, "engine", name)
    factory, _ = engines[name]
    return check_engine(factory(target, drafter, dict(options or {})), name)
