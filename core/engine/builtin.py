"""The built-in speculative engine, registered as an ordinary plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..hookspecs import hookimpl

# engines import torch (and llama.cpp) only when built: a llama.cpp-only server never loads torch

if TYPE_CHECKING:
    from ..hookspecs import Register


def _specguard(target: Any, drafter: Any, options: dict[str, Any]) -> Any:
    from .speculative import SpeculativeEngine

    return SpeculativeEngine(target, drafter, top_logprobs=int(options.get("top_logprobs", 5)))


def _transformers(target: Any, drafter: Any, options: dict[str, Any]) -> Any:
    from .transformers_engine import build

    return build(target, drafter, options)


def _llamacpp(target: Any, drafter: Any, options: dict[str, Any]) -> Any:
    from .llamacpp import build

    return build(target, drafter, options)


@hookimpl
def register_engines(register: Register) -> None:
    register("specguard", _specguard, "target-verified speculative decoding (the reference engine)")
    register("builtin", _specguard, "the reference engine (alias of specguard)")
    register("llamacpp", _llamacpp, "llama.cpp on the model's GGUF as the target (fast; not torch-re-derivable)")
    register("transformers", _transformers, "transformers generate (greedy, prompt lookup, assisted) + specguard sampling")
