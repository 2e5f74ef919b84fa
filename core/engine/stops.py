"""Where generation stops: stop tokens (EOS), stop strings, and the text cut that goes with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def cut_at_stop_token(emitted: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """`emitted` up to and including its first stop token, and whether one was found."""
    for i, tok in enumerate(emitted):
        if tok in stop_ids:
            return emitted[: i + 1], True
    return emitted, False


def stop_string_cut(decode: Callable[[list[int]], str], output: list[int], stops: tuple[str, ...]) -> int | None:
    """The length of the shortest token prefix of `output` whose text contains a stop string, or None."""
    if not stops:
        return None
    text = decode(output)
    if not any(s in text for s in stops):
        return None
    for n in range(1, len(output) + 1):
        partial = decode(output[:n])
        if any(s in partial for s in stops):
            return n
    return len(output)


def trim_at_stop_string(decode: Callable[[list[int]], str], output: list[int], records: list[Any],
                        step_records: list[Any], stops: tuple[str, ...]) -> tuple[list[Any], bool]:
    """Cut `output` and `records` (in place) at the first stop string; return what is left of this
    step's records and whether a stop string was hit (the same rule for every engine)."""
    stop_at = stop_string_cut(decode, output, stops)
    if stop_at is None:
        return step_records, False
    cut = len(output) - stop_at
    del output[stop_at:]
    del records[stop_at:]
    return step_records[: max(0, len(step_records) - cut)], True


def cut_text(text: str, stops: tuple[str, ...]) -> str:
    """`text` before the first occurrence of any stop string (the stop string itself is not returned)."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]
