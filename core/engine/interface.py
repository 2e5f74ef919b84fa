"""The Engine protocol: what the server, the CLI, consensus and audits need from an engine.

The built-in `SpeculativeEngine` implements it, and so must every adapter registered through
the `register_engines` hook (llama.cpp, transformers `generate`, vLLM, ...): `make_engine`
checks the object a factory returns against this protocol and raises `PluginError` otherwise.

An engine generates for one request at a time (the server builds one per request):

- `stream(prompt_ids, params, ...)` is a generator that yields one `StepEvent` per target
  forward pass (the tokens that step made final) and *returns* the `Transcript`
  (`StopIteration.value`, or `drain()`);
- `generate(...)` runs the same generation to the end and returns the `Transcript`.

`capabilities` says what the engine promises, so that integrity layers know which checks apply;
the contract test (tests/engine/test_contract.py) holds every registered engine to it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import PluginError
from ..transcript import SAMPLING_MODES, SamplingParams, Step, TokenRecord, Transcript


@dataclass
class StepEvent:
    """What an engine yields while streaming: the tokens one step made final.

    `tokens` may be shorter than `step.emitted` when a stop string cut the output inside
    this step (the transcript then ends with the last token before the cut).
    """

    step: Step
    tokens: list[TokenRecord]


#: Called with each `Step` right after it is verified (the `on_step` plugin hook rides on it).
StepCallback = Callable[[Step], None]
#: Polled before each step; True ends generation with finish_reason "cancelled".
StopCheck = Callable[[], bool]
#: What `Engine.stream` returns: yields StepEvents, returns the Transcript.
EngineStream = Generator[StepEvent, None, Transcript]


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine promises. Declare only what holds: the contract test checks each flag.

    - `rederivable`: in `gumbel` mode (greedy, or sampled with a seed) every output token is the
      reference rule's choice (`specguard.engine.acceptance.verify_step`, i.e. the argmax or the
      seed's Gumbel-max argmax of the target's logits), so teacher-forced scoring
      (`specguard.engine.scoring.score`) re-derives the output from (model, prompt, params, seed).
    - `uses_drafter`: the engine asks the drafter it was built with for proposals (and records
      its name in each step). An engine that ignores its drafter says False.
    - `logprobs`: `TokenRecord.logprob` and `TokenRecord.top` are the target's (temperature-1)
      log-probabilities; up to `max_top_logprobs` alternatives may be asked for.
    - `sampling_modes`: the `SamplingParams.mode` values the engine accepts; others raise
      `RequestError`.
    - `version`: the implementation's version, recorded by operators next to the engine name.
    """

    rederivable: bool
    uses_drafter: bool
    logprobs: bool
    max_top_logprobs: int = 0
    sampling_modes: tuple[str, ...] = ("gumbel",)
    version: str = ""

    def problems(self) -> list[str]:
        """Why these capabilities are inconsistent (empty when they are fine)."""
        out = []
        for flag in ("rederivable", "uses_drafter", "logprobs"):
            if not isinstance(getattr(self, flag), bool):
                out.append(f"{flag} is not a bool")
        m = self.max_top_logprobs
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            out.append(f"max_top_logprobs {m!r} is not a non-negative integer")
        elif m > 0 and not self.logprobs:
            out.append("max_top_logprobs > 0 without logprobs")
        modes = self.sampling_modes
        if not isinstance(modes, tuple) or not modes or any(mode not in SAMPLING_MODES for mode in modes):
            out.append(f"sampling_modes {modes!r} is not a non-empty tuple of {SAMPLING_MODES}")
        if not isinstance(self.version, str):
            out.append("version is not a string")
        return out


@runtime_checkable
class Engine(Protocol):
    """One generation engine. Implementations need not subclass this (structural typing)."""

    name: str
    capabilities: EngineCapabilities

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        top_logprobs: int | None = None,
    ) -> EngineStream:
        """Yield a StepEvent per step; return the Transcript. Bad input raises RequestError."""
        ...

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        top_logprobs: int | None = None,
    ) -> Transcript:
        """Run to completion and return the Transcript (the same one `stream` returns)."""
        ...


def drain(stream: EngineStream) -> Transcript:
    """Run a stream to its end and return its Transcript (how `generate` can be written)."""
    while True:
        try:
            next(stream)
        except StopIteration as done:
            return done.value


def check_engine(engine: Any, name: str) -> Engine:
    """Return `engine` if it satisfies the Engine protocol, else raise PluginError.

    `name` is the name the engine was registered under (for the message).
    """
    if not isinstance(engine, Engine):
        missing = [a for a in ("name", "capabilities", "stream", "generate") if not hasattr(engine, a)]
        raise PluginError(
            "engine factory returned an object that is not an Engine",
            field=f"engine {name!r}", got=f"{type(engine).__name__} (missing {', '.join(missing)})",
            expected="specguard.engine.interface.Engine",
        )
    if not isinstance(engine.name, str) or not engine.name:
        raise PluginError("engine name is not a non-empty string", field=f"engine {name!r}.name", got=repr(engine.name))
    caps = engine.capabilities
    if not isinstance(caps, EngineCapabilities):
        raise PluginError(
            "engine capabilities have the wrong type", field=f"engine {name!r}.capabilities",
            got=type(caps).__name__, expected="EngineCapabilities",
        )
    problems = caps.problems()
    if problems:
        raise PluginError("engine capabilities are inconsistent", field=f"engine {name!r}.capabilities",
                          got="; ".join(problems))
    for method in ("stream", "generate"):
        if not callable(getattr(engine, method)):
            raise PluginError(f"engine {method} is not callable", field=f"engine {name!r}.{method}")
    return engine
