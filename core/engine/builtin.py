"""The built-in speculative engine, registered as an ordinary plugin."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from .speculative import SpeculativeEngine
from .transformers_engine import build as _transformers


def _specguard(target: Any, drafter: Any, options: dict[str, Any]) -> SpeculativeEngine:
    return SpeculativeEngine(target, drafter, top_logprobs=int(options.get("top_logprobs", 5)))


@hookimpl
def register_engines(register):
    register("specguard", _specguard, "target-verified speculative decoding (the reference engine)")
    register("transformers", _transformers, "transformers generate (greedy, prompt lookup, assisted) + specguard sampling")
