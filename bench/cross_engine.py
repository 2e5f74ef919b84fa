"""Cross-engine drift: llama.cpp (Q4_1 GGUF) greedy outputs re-scored by the fp32 torch model.

For Spec-Bench prompts (chat template), llama.cpp generates greedily (llama-cpp-python directly,
one thread, no repeat penalty, no EOS stop); the torch model scores each output teacher-forced
(`specguard.engine.scoring.score`). Reported: agreement, the decision-score gap at every
disagreement (distribution), disagreements per response, the largest |Δ logprob| of the chosen
tokens, the [consensus.engines.llamacpp] table `recommended_cross_engine` derives, and the
freedom each margin leaves (fraction of positions with another token within the margin, and how
many). With --json the raw report goes to a file (tests use core/consensus/cross_engine_calibration.json).

    .venv/bin/python bench/cross_engine.py --prompts 24 --tokens 32 --json core/consensus/cross_engine_calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from _report import table, write_section  # noqa: E402
from _spec_bench import QUESTIONS, first_turns, spread

from specguard.consensus.calibrate import (  # noqa: E402
    cross_engine_calibrate,
    freedom,
    llamacpp_greedy,
    recommended_cross_engine,
)
from specguard.drafters.llamacpp import target_gguf  # noqa: E402
from specguard.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", default=str(QUESTIONS))
    ap.add_argument("--json", default=None, help="write the raw report here")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (llama.cpp always uses 1)")
    ap.add_argument("--from-json", default=None, help="only write the docs section from a saved raw report")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_json:
        write_doc(json.loads(Path(args.from_json).read_text()),
                  "python bench/cross_engine.py --prompts 32 --tokens 32 --json " + args.from_json)
        return
    model = load_model(args.model)
    gguf = target_gguf(model)
    if gguf is None:
        sys.exit(f"{args.model} was not loaded from a GGUF file")
    texts = spread(first_turns(Path(args.questions)), args.prompts)
    prompts = [model.encode_chat([{"role": "user", "content": t}]) for t in texts]
    generate = llamacpp_greedy(str(gguf), n_threads=1)
    outputs: list[list[int]] = []

    def recording(prompt, n):
        ids, lps = generate(prompt, n)
        outputs.append(ids)
        print(f"prompt {len(outputs)}/{len(prompts)}", file=sys.stderr, flush=True)
        return ids, lps

    t0 = time.perf_counter()
    report = cross_engine_calibrate(model, recording, prompts, args.tokens, engine="llamacpp")
    seconds = time.perf_counter() - t0
    rec = recommended_cross_engine(report)
    margins = sorted({0.001, 0.1, 0.25, 0.5, rec["margin"], 1.0})
    free = freedom(model, list(zip(prompts, outputs, strict=True)), margins)
    raw = {"model": model.name, "gguf": gguf.name, "prompts": len(prompts), "max_tokens": args.tokens,
           "seconds": round(seconds, 1), "report": report.to_json(), "recommended": rec,
           "freedom": [f.to_json() for f in free]}
    print(json.dumps({k: v for k, v in raw.items() if k != "report"} | {
        "summary": {k: v for k, v in report.to_json().items() if k not in ("gaps", "per_response")}}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")
    if args.no_doc:
        return
    write_doc(raw, "python bench/cross_engine.py " + " ".join(sys.argv[1:]))


def write_doc(raw: dict, command: str) -> None:
    """The docs/benchmarks.md section for a raw report (also from a saved one: --from-json)."""
    rep, rec = raw["report"], raw["recommended"]
    q = rep["gap_quantiles"]
    body = (
        f"{rep['responses']} Spec-Bench prompts × {raw['max_tokens']} greedy tokens from llama.cpp "
        f"({raw['gguf']}, llama-cpp-python, 1 thread) re-scored by the fp32 torch model ({rep['tokens']} tokens, "
        f"{raw['seconds']:.0f} s in all; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores). "
        "Only the distributions matter here, not the time.\n\n"
        + table(["agreement", "disagreements", "gap p50", "gap p90", "gap max", "max per response",
                 "max fraction per response", "max abs Δ logprob (chosen)"],
                [[rep["agreement"], rep["disagreements"], q["p50"], q["p90"], q["max"],
                  rep["max_disagreements_per_response"], rep["max_fraction_per_response"],
                  rep["max_logprob_error"] or 0.0]])
        + "\n\nRecommended `[consensus.engines.llamacpp]`: "
        + ", ".join(f"`{k} = {v}`" for k, v in rec.items())
        + ".\n\nFreedom a margin leaves a dishonest engine (greedy, on these contexts; top 64 inspected):\n\n"
        + table(["margin", "positions with an alternative within it", "alternatives per position",
                 "alternatives where any"],
                [[f["margin"], f["fraction_with_alternative"], f["mean_alternatives"],
                  f["mean_alternatives_where_any"]] for f in raw["freedom"]])
    )
    write_section("cross_engine", "Cross-engine re-checking (llama.cpp vs torch)", command, body)


if __name__ == "__main__":
    main()
