"""The fast lossless configuration `specguard serve` and `specguard generate` start with.

`choose_defaults` is a pure function of the CPUs this process may use, whether llama.cpp can draft
for the model, and what the user gave on the command line; everything the user gave wins.

- **Drafter**: with the built-in engine, the `llamacpp` drafter (llama.cpp on the model's GGUF
  drafts long runs, drafting ahead while the target verifies) when llama-cpp-python is installed and
  the model came from a GGUF; `ngram` otherwise. Both are lossless: the target verifies every token,
  so the output equals plain decoding whatever the drafter proposes.
- **Threads** (issue 22: torch's default two threads on a busy 2-core box made a 32-token answer take
  ~22 s against ~3 s on one): the drafter's background thread gets its own core(s) first
  (`drafter_threads`, 1), then one core is left to the HTTP server, receipts and the OS, and torch
  takes what is left, at least 1 and at most `MAX_TORCH_THREADS` (a small model gains nothing from
  more, and idle intra-op threads spin). torch + drafter threads never exceed the CPUs when there
  are 2 or more; on 1 CPU the drafter does not draft ahead and the two take turns.
- **Other engines** (`--engine llamacpp`, ...) verify no drafts: the drafter stays `ngram` (unused),
  torch gets the same share as above, and the engine keeps its own thread default unless `--threads`
  is given.

A policy's `[drafter]` table may still set `n_threads` or `draft_ahead`; command-line flags win over it,
and it wins over what is chosen here.

`RunDefaults.describe()` is the line both commands print, so the choice is visible and overridable
(`--drafter`, `--threads`, `--drafter-threads`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecguardError

BUILTIN_ENGINES = ("specguard", "builtin")
#: drafters that run llama.cpp threads of their own beside the target
THREADED_DRAFTERS = ("llamacpp",)
MAX_TORCH_THREADS = 8
DEFAULT_DRAFTER_THREADS = 1


@dataclass(frozen=True)
class RunDefaults:
    """What a command runs with: the drafter, the thread split, and which of them were chosen for the user."""

    engine: str
    drafter: str
    torch_threads: int
    #: llama.cpp threads of a threaded drafter (None: the drafter runs no threads of its own)
    drafter_threads: int | None
    #: whether the drafter drafts ahead in a background thread (None: not applicable)
    draft_ahead: bool | None
    #: the engine's own threads option (None: the engine's default)
    engine_threads: int | None
    cpus: int
    #: names of the fields chosen here rather than given by the user
    chosen: tuple[str, ...] = field(default=())

    def drafter_options(self) -> dict[str, Any]:
        """Drafter options the user gave (they override the policy's `[drafter]` table; chosen values do not)."""
        if self.drafter not in THREADED_DRAFTERS or "drafter threads" in self.chosen:
            return {}
        return {"n_threads": self.drafter_threads}

    def engine_options(self) -> dict[str, Any]:
        """The engine's `threads` option when the user gave `--threads` (else the engine's own default)."""
        return {} if self.engine_threads is None else {"threads": self.engine_threads}

    def describe(self) -> str:
        """One line for the banner, e.g. `drafter llamacpp (draft-ahead), torch 1 thread + drafter 1 thread
        on 2 CPUs [chosen: drafter, threads]`."""
        drafter = self.drafter + (" (draft-ahead)" if self.draft_ahead else "")
        parts = [f"torch {_threads(self.torch_threads)}"]
        if self.drafter_threads is not None:
            parts.append(f"drafter {_threads(self.drafter_threads)}")
        if self.engine not in BUILTIN_ENGINES:
            parts.append(f"engine {self.engine} " + (_threads(self.engine_threads) if self.engine_threads
                                                      else "its default threads"))
        chosen = f" [chosen: {', '.join(self.chosen)}; override with --drafter/--threads/--drafter-threads]" \
            if self.chosen else ""
        return f"drafter {drafter}; {' + '.join(parts)} on {self.cpus} CPU{'s' if self.cpus != 1 else ''}{chosen}"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def choose_defaults(
    cpus: int,
    llamacpp_available: bool,
    *,
    engine: str = "specguard",
    drafter: str | None = None,
    threads: int | None = None,
    drafter_threads: int | None = None,
) -> RunDefaults:
    """The configuration to run: what the user gave (`drafter`, `threads`, `drafter_threads`), the rest chosen.

    `cpus` is how many CPUs this process may run on (`available_cpus()`); `llamacpp_available` whether
    the llama.cpp drafter can run for this model (`llamacpp_drafter_available`).
    """
    cpus = max(1, int(cpus))
    chosen: list[str] = []
    builtin = engine in BUILTIN_ENGINES
    if drafter is None:
        drafter = "llamacpp" if builtin and llamacpp_available else "ngram"
        chosen.append("drafter")
    engine_threads = threads
    threaded = builtin and drafter in THREADED_DRAFTERS
    ahead = threaded and cpus >= 2
    if not threaded:
        drafter_threads = None  # only a threaded drafter has threads to give
    elif drafter_threads is None:
        drafter_threads = DEFAULT_DRAFTER_THREADS
        chosen.append("drafter threads")
    reserved = (drafter_threads or 0) if ahead else 0
    if threads is None:
        threads = max(1, min(MAX_TORCH_THREADS, cpus - reserved - 1))
        chosen.append("threads")
    return RunDefaults(engine=engine, drafter=drafter, torch_threads=threads,
                       drafter_threads=drafter_threads,
                       draft_ahead=ahead if threaded else None, engine_threads=engine_threads, cpus=cpus,
                       chosen=tuple(chosen))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def llamacpp_drafter_available(model_ref: str | None) -> bool:
    """True when llama-cpp-python is installed and `model_ref` names a GGUF (the llama.cpp drafter's file).

    Checked before the model loads, without importing llama_cpp.
    """
    from .models import resolve

    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        kind, _ = resolve(model_ref)
    except SpecguardError:
        return False
    return kind == "gguf"
