"""Spec-Bench's questions for bench scripts: where the file is, and its first turns.

The file is SPECGUARD_SPEC_BENCH, else shared/data/spec_bench/question.jsonl in the `shared` folder
beside the checkout, else in /work/shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_SPEC_BENCH = Path("data") / "spec_bench" / "question.jsonl"
_ROOTS = (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared"))
QUESTIONS = Path(os.environ.get("SPECGUARD_SPEC_BENCH")
                 or next((r / _SPEC_BENCH for r in _ROOTS if (r / _SPEC_BENCH).is_file()), _ROOTS[0] / _SPEC_BENCH))


def first_turns(path: Path = QUESTIONS) -> list[str]:
    """Every question's first turn, in file order."""
    return [json.loads(line)["turns"][0] for line in Path(path).read_text().splitlines()]


def by_category(path: Path = QUESTIONS) -> dict[str, list[str]]:
    """First turns per Spec-Bench category, in file order."""
    found: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["category"], []).append(row["turns"][0])
    return found


def spread(texts: list[str], n: int) -> list[str]:
    """n of `texts` at an even stride (over Spec-Bench's categories, which the file keeps together)."""
    return texts[:: max(1, len(texts) // n)][:n]
