"""Progress display on stderr for slow, one-off work (hashing, conversion, loading, digests).

Every phase says what it does when it starts and how long it took when it ends, on a terminal or
not (a service log shows the same lines):

    specguard: Converting SmolLM2-135M-Instruct.Q4_1.gguf (one time) ...
    specguard: Converting SmolLM2-135M-Instruct.Q4_1.gguf (one time): done in 17.3s

On a terminal a live tqdm bar shows the elapsed time, or the progress out of `total` when the
phase knows how much work it has. `SPECGUARD_QUIET=1` silences it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PREFIX = "specguard: "


class Phase:
    """A running phase; `advance(n)` reports `n` more units of work done (a no-op without a bar)."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar
        self.seconds = 0.0

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)


def _quiet() -> bool:
    return os.environ.get("SPECGUARD_QUIET", "") not in ("", "0")


@contextmanager
def phase(label: str, *, total: float | None = None, unit: str = "it", unit_scale: bool = False) -> Iterator[Phase]:
    """Run a block as a named phase: a start line, a live bar on a terminal, a done line with its duration."""
    if _quiet():
        yield Phase()
        return
    tty = sys.stderr.isatty()
    if not tty:
        print(f"{PREFIX}{label} ...", file=sys.stderr, flush=True)
    bar, done, thread = None, threading.Event(), None
    if tty:
        from tqdm import tqdm

        fmt = "{desc}: {elapsed}" if total is None else "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
        bar = tqdm(total=total, desc=PREFIX + label, bar_format=fmt, file=sys.stderr, leave=False, unit=unit,
                   unit_scale=unit_scale)

        def tick() -> None:
            while not done.wait(0.2):
                bar.refresh()

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
    current = Phase(bar)
    start = time.monotonic()
    ok = False
    try:
        yield current
        ok = True
    finally:
        done.set()
        if thread is not None:
            thread.join()
        if bar is not None:
            bar.close()
        current.seconds = time.monotonic() - start
        outcome = "done" if ok else "failed"
        print(f"{PREFIX}{label}: {outcome} in {current.seconds:.1f}s", file=sys.stderr, flush=True)


@contextmanager
def spinner(label: str) -> Iterator[None]:
    """A phase without a known amount of work (kept for existing callers)."""
    with phase(label):
        yield
