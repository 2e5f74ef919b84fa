"""Cost of one verification forward by number of rows (section "verify-rows" of docs/benchmarks.md).

The engine pads verification forwards that carry a draft to `MIN_VERIFY_ROWS` rows
(`specguard.engine.speculative.pad_rows`). This probe shows why on the machine at hand: it times
the default model's forward over a 300-token KV cache for 1..12 new rows, and the LM head
(49152 x 576) alone, where the effect comes from. Rerun it on new hardware before changing the
default.

    .venv/bin/python bench/verify_rows.py [--reps 15] [--context 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _report import table, write_section  # noqa: E402

from specguard.engine import kv  # noqa: E402
from specguard.engine.speculative import MIN_VERIFY_ROWS  # noqa: E402
from specguard.models import load_model  # noqa: E402

ROWS = [1, 2, 3, 4, 5, 6, 8, 12]


def forward_ms(model, context: int, rows: int, reps: int) -> float:
    """Median ms of a `rows`-token forward on top of a `context`-token cache."""
    times = []
    for _ in range(reps):
        cache = kv.new_cache(model)
        with torch.inference_mode():
            kv.forward(model, list(range(1000, 1000 + context)), cache, 1)
            t = time.perf_counter()
            kv.forward(model, list(range(2000, 2000 + rows)), cache, rows)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def head_ms(weight: torch.Tensor, rows: int, reps: int) -> float:
    """Median ms of the LM-head matmul alone for `rows` hidden states."""
    x = torch.randn(1, rows, weight.shape[1])
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            t = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--context", type=int, default=300)
    args = ap.parse_args()
    target = load_model(None)
    model = target.model
    head = model.get_output_embeddings().weight
    forward_ms(model, args.context, 1, 2)  # warm-up
    fwd = {r: forward_ms(model, args.context, r, args.reps) for r in ROWS}
    lm = {r: head_ms(head, r, args.reps * 2) for r in ROWS}
    rows = [[r, f"{fwd[r]:.1f}", f"{fwd[r] / fwd[1]:.2f}x", f"{lm[r]:.1f}"] for r in ROWS]
    body = (
        f"Default model (SmolLM2-135M, fp32), one forward of N new tokens over a {args.context}-token KV cache, "
        f"median of {args.reps}; LM head = the {tuple(head.shape)} output projection alone.\n\n"
        + table(["rows N", "forward ms", "vs 1 row", "LM head ms"], rows)
        + f"\n\nThe engine pads forwards that carry a draft to {MIN_VERIFY_ROWS} rows (`pad_rows`) and asks "
        f"lookup drafters for {MIN_VERIFY_ROWS - 1} tokens: rows that cost nothing extra are filled, and the "
        "slow small-row shapes are never used. Plain decoding (1 row) is never padded.\n"
    )
    write_section("verify-rows", "Verification forward cost by rows (engine padding)",
                  "python bench/verify_rows.py " + " ".join(sys.argv[1:]), body)
    print(body)


if __name__ == "__main__":
    main()
