"""Re-check cost vs generation (issue 23, issue 20 §4): what a verifier pays to judge an answer.

    .venv/bin/python bench/recheck.py [--model REF] [--tokens 128] [--prompts 3] [--repeats 3] [--threads 1]
                                      [--write]

For each prompt: generate `--tokens` tokens greedily with the built-in engine and no drafter (what a
serving node pays without speculation), then time `rederive.judge` on the transcript (one
teacher-forced forward pass, chunked log-softmax, stop and length checks: what a verifier pays),
best of `--repeats`. Prints seconds per token of each and their ratio (target: generation / re-check
>= 20 for 128 tokens). `--write` replaces section "recheck" of docs/benchmarks.md: only on a quiet
machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _report import machine, table, write_section  # noqa: E402

PROMPTS = [
    "Explain why the sky is blue in a few sentences.",
    "Write a short story about a lighthouse keeper.",
    "List the steps to make a cup of tea.",
    "Describe how a bicycle works.",
]


def measure(model, prompt: str, tokens: int, repeats: int) -> tuple[float, float, int, str]:
    """(generation seconds, best re-check seconds, output tokens, verdict) for one prompt."""
    from specguard.consensus.rederive import judge
    from specguard.engine.speculative import SpeculativeEngine
    from specguard.transcript import SamplingParams

    ids = model.encode(prompt)
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)  # fixed-length outputs
    engine = SpeculativeEngine(model)
    t0 = time.perf_counter()
    transcript = engine.generate(ids, params)
    generation = time.perf_counter() - t0
    checks = []
    verdict = ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        verdict = judge(model, transcript).verdict
        checks.append(time.perf_counter() - t0)
    return generation, min(checks), len(transcript.output_ids), verdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model reference (default: the embedded SmolLM2-135M)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md section 'recheck'")
    args = ap.parse_args()

    import torch

    from specguard.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    measure(model, PROMPTS[0], 4, 1)  # warm up
    rows, ratios = [], []
    for prompt in PROMPTS[: args.prompts]:
        gen, check, n, verdict = measure(model, prompt, args.tokens, args.repeats)
        ratios.append(gen / check)
        rows.append([prompt[:32], n, gen, check, 1000 * gen / n, 1000 * check / n, gen / check, verdict])
    body = table(["prompt", "tokens", "generate s", "re-check s", "generate ms/token", "re-check ms/token",
                  "generate / re-check", "verdict"], rows)
    body += f"\n\nMedian generate / re-check: {statistics.median(ratios):.1f}x ({model.name}, {args.threads} thread(s))."
    print(f"machine: {machine()}")
    print(body)
    if args.write:
        write_section("recheck", "Verifier re-check cost vs generation", "python bench/recheck.py " +
                      " ".join(sys.argv[1:]), body)


if __name__ == "__main__":
    main()
