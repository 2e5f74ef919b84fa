"""Progress display on stderr for slow, one-off work (model conversion and loading)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def spinner(label: str) -> Iterator[None]:
    """Show an elapsed-time indicator on a terminal while the block runs (silent otherwise)."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    done = threading.Event()
    bar = tqdm(total=None, desc=label, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False)

    def tick() -> None:
        while not done.wait(0.2):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    start = time.monotonic()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()
        print(f"{label}: done in {time.monotonic() - start:.1f}s", file=sys.stderr)
