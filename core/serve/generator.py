"""How a serving node runs requests: one `Generator` protocol, two implementations chosen once,
when the node is built (like vLLM's `EngineClient`), so no caller probes the node to find the path.

- `BatchedGenerator`: the built-in engine's continuous-batching `BatchScheduler` (one thread owns
  the target model and runs one forward per iteration over every running request);
- `ThreadedGenerator`: any engine, one fresh engine (and drafter) per request in its own thread.

Both report through the job's `emit(kind, value)`: zero or more ("event", StepEvent), then
exactly one ("done", Transcript) or ("error", exception).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..transcript import SamplingParams

if TYPE_CHECKING:
    from ..drafters.base import Drafter
    from ..engine.batching import BatchScheduler
    from ..engine.interface import Engine, StepCallback, StopCheck

#: emit(kind, value): "event" + StepEvent, then "done" + Transcript or "error" + exception
Emit = Callable[[str, Any], None]


@dataclass(frozen=True)
class GenerationJob:
    """One request to generate: what an engine's `stream` takes, plus where its items go."""

    name: str
    prompt_ids: list[int]
    params: SamplingParams
    emit: Emit
    top_logprobs: int = 5
    on_step: StepCallback | None = None
    should_stop: StopCheck | None = None


@runtime_checkable
class Generator(Protocol):
    """Runs jobs; `batching` says which implementation (GET /health reports it)."""

    batching: bool

    def submit(self, job: GenerationJob) -> None:
        """Start `job`; its items arrive through `job.emit`, from another thread."""
        ...

    def close(self) -> None:
        """Stop; jobs still running end with ("error", ...)."""
        ...


class BatchedGenerator:
    """Jobs join the continuous-batching scheduler of the built-in engine."""

    batching = True

    def __init__(self, scheduler: BatchScheduler, make_drafter: Callable[[], Drafter]) -> None:
        self.scheduler = scheduler
        self._make_drafter = make_drafter

    def submit(self, job: GenerationJob) -> None:
        from ..engine.batching import BatchRequest

        self.scheduler.start()
        self.scheduler.submit(BatchRequest(job.prompt_ids, job.params, self._make_drafter, job.emit,
                                           top_logprobs=job.top_logprobs, on_step=job.on_step,
                                           should_stop=job.should_stop))

    def close(self) -> None:
        self.scheduler.stop()


class ThreadedGenerator:
    """Each job gets a fresh engine (and drafter) from `make_engine`, streamed in its own thread."""

    batching = False

    def __init__(self, make_engine: Callable[[], Engine]) -> None:
        self._make_engine = make_engine

    def submit(self, job: GenerationJob) -> None:
        threading.Thread(target=self._run, args=(job,), name=f"specguard-{job.name}", daemon=True).start()

    def _run(self, job: GenerationJob) -> None:
        try:
            transcript = self._stream(job)
        except BaseException as exc:  # handed to the request handler, which answers with an error body
            job.emit("error", exc)
            return
        job.emit("done", transcript)

    def _stream(self, job: GenerationJob) -> Any:
        stream = self._make_engine().stream(job.prompt_ids, job.params, on_step=job.on_step,
                                            should_stop=job.should_stop, top_logprobs=job.top_logprobs)
        while True:
            try:
                event = next(stream)
            except StopIteration as done:
                return done.value
            job.emit("event", event)

    def close(self) -> None:
        """Nothing to stop: each job's thread ends with its request."""


__all__ = ["BatchedGenerator", "Emit", "GenerationJob", "Generator", "ThreadedGenerator"]
