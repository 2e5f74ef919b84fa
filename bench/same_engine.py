"""Same-engine noise of llama.cpp: the engine's decode against a verifier's re-execution.

The `llamacpp` engine generates one token per step after a chunked prompt prefill; a same-engine
verifier re-executes llama.cpp on the same GGUF over prompt + claimed output on the engine's
schedule (`specguard.consensus.llamacpp_rederive.replay_logits`). This script measures how far the
two differ on honest responses of the default model (Spec-Bench prompts, chat template; greedy and
seeded sampling), for several verifier settings (threads, context size), and, for comparison, a
single teacher-forced prefill pass (`teacher_forced_logits`, batches of 512 / 7 tokens), which
is cheaper but uses llama.cpp's batched kernels. It derives the same-engine tolerance from the
replay settings:

- drift: the largest |Δ log-probability| of the claimed token and of its top alternatives
  (temperature 1) between the engine's record and each re-execution, and the number of positions
  whose re-derived choice differs from the emitted token (flips), with their decision-score gaps;
- recommended: margin = max(`--factor` x 2 x max drift, largest flip gap x `--factor`, 1e-3) logits;
  logprob_tolerance = max(`--factor` x max drift, 1e-4);
- false rejects: honest responses the recommended tolerance would reject, per setting;
- freedom: the fraction of positions where another token is within the margin (what a dishonest
  node could choose instead), at the recommended margin and at the cross-engine 0.67.

    .venv/bin/python bench/same_engine.py --prompts 32 --tokens 32 --json core/consensus/same_engine_calibration.json
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

from specguard.consensus.llamacpp_rederive import (  # noqa: E402
    KV_F16,
    replay_logits,
    score_logits,
    teacher_forced_logits,
)
from specguard.engine.llamacpp import LlamaCppEngine  # noqa: E402
from specguard.llamacpp_runtime import POOL, target_gguf  # noqa: E402
from specguard.models import load_model  # noqa: E402
from specguard.transcript import SamplingParams, Transcript  # noqa: E402

CROSS_ENGINE_MARGIN = 0.67
#: verifier settings: (how, threads, n_ctx, prefill batch); "replay" ones calibrate, "prefill" ones are shown
SETTINGS = [("replay", 1, 8192, 0), ("replay", 2, 8192, 0), ("prefill", 1, 8192, 512), ("prefill", 1, 8192, 7)]


def prompts_of(model, path: Path, n: int) -> list[list[int]]:
    texts = first_turns(path) if path.is_file() else []
    if texts:
        texts = spread(texts, n)
    else:  # no Spec-Bench copy: a few fixed questions, repeated with an index
        base = ["Explain photosynthesis briefly.", "Write a haiku about the sea.", "What is 17 times 23?",
                "Should you put water on a grease fire? Answer yes or no.", "List three uses of copper."]
        texts = [f"{base[i % len(base)]} ({i})" for i in range(n)]
    return [model.encode_chat([{"role": "user", "content": t}]) for t in texts]


def rescore(gguf: str, t: Transcript, how: str, threads: int, n_ctx: int, n_batch: int):
    extra = {"type_k": KV_F16, "type_v": KV_F16}
    llama = POOL.acquire(gguf, threads, n_ctx, **extra)
    try:
        if how == "replay":
            logits = replay_logits(llama, t.prompt_ids, t.output_ids)
        else:
            logits = teacher_forced_logits(llama, t.prompt_ids, t.output_ids, n_batch=n_batch)
    finally:
        POOL.release(gguf, threads, n_ctx, llama, **extra)
    return score_logits(logits, t.output_ids, t.params, top_k=64).positions


def compare(t: Transcript, positions) -> dict:
    """Drift of one re-execution against the engine's records."""
    drift, flips = 0.0, []
    for rec, pos in zip(t.tokens, positions, strict=True):
        drift = max(drift, abs(rec.logprob - pos.logprob))
        mine = dict(pos.top)
        drift = max([drift, *(abs(lp - mine[alt]) for alt, lp in rec.top if alt in mine)])
        if not pos.agrees:
            flips.append(pos.given_score_gap)
    return {"drift": drift, "flips": flips}


def judge_honest(t: Transcript, positions, margin: float, lp_tol: float) -> bool:
    """Would the recommended tolerance accept this honest response?"""
    m = margin if t.params.greedy else margin / t.params.temperature
    mine = [dict(p.top) for p in positions]
    for rec, pos, top in zip(t.tokens, positions, mine, strict=True):
        if not pos.agrees and pos.given_score_gap > m:
            return False
        if abs(rec.logprob - pos.logprob) > lp_tol or any(alt not in top or abs(lp - top[alt]) > lp_tol
                                                           for alt, lp in rec.top):
            return False
    return True


def freedom(runs: list[tuple[Transcript, list]], margin: float) -> float:
    """Fraction of positions where another token's decision score is within `margin` (logits, / T if sampled)."""
    total = near = 0
    for t, positions in runs:
        m = margin if t.params.greedy else margin / t.params.temperature
        total += len(positions)
        near += sum(1 for p in positions if p.margin <= m)
    return near / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", default=str(QUESTIONS))
    ap.add_argument("--factor", type=float, default=10.0, help="safety factor over the measured drift")
    ap.add_argument("--engine-threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the raw report (the committed calibration) here")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--replay-ctx", type=int, nargs="*", default=[],
                    help="also replay with these context sizes (one thread)")
    args = ap.parse_args()
    settings = SETTINGS + [("replay", 1, ctx, 0) for ctx in args.replay_ctx]
    torch.set_num_threads(1)
    model = load_model(args.model)
    gguf = target_gguf(model)
    if gguf is None:
        sys.exit(f"{args.model} was not loaded from a GGUF file")
    n_ctx = min(model.max_context, 8192)
    engine = LlamaCppEngine(model, gguf, threads=args.engine_threads, n_ctx=n_ctx, top_logprobs=20)
    prompts = prompts_of(model, Path(args.questions), args.prompts)
    t0 = time.perf_counter()
    transcripts: list[Transcript] = []
    for i, prompt in enumerate(prompts):
        for params in (SamplingParams(max_tokens=args.tokens, ignore_eos=True),
                       SamplingParams(max_tokens=args.tokens, temperature=0.8, seed=1000 + i, ignore_eos=True)):
            transcripts.append(engine.generate(prompt, params, top_logprobs=20))
        print(f"generated {i + 1}/{len(prompts)}", file=sys.stderr, flush=True)
    per_setting = {}
    rescored: dict[str, list] = {}
    for how, threads, ctx, n_batch in settings:
        name = f"{how} threads={threads} n_ctx={ctx}" + (f" n_batch={n_batch}" if how == "prefill" else "")
        runs = [(t, rescore(str(gguf), t, how, threads, ctx, n_batch)) for t in transcripts]
        rescored[name] = runs
        cmp = [compare(t, p) for t, p in runs]
        flips = [g for c in cmp for g in c["flips"]]
        per_setting[name] = {"calibrates": how == "replay", "max_logprob_drift": max(c["drift"] for c in cmp),
                             "flips": len(flips), "max_flip_gap": max(flips, default=0.0)}
        print(f"rescored {name}", file=sys.stderr, flush=True)
    drift = max(s["max_logprob_drift"] for s in per_setting.values() if s["calibrates"])
    flip_gap = max(s["max_flip_gap"] for s in per_setting.values() if s["calibrates"])
    margin = float(f"{max(args.factor * 2 * drift, args.factor * flip_gap, 1e-3):.2g}")
    lp_tol = float(f"{max(args.factor * drift, 1e-4):.2g}")
    for name, runs in rescored.items():
        per_setting[name]["false_rejects"] = sum(1 for t, p in runs if not judge_honest(t, p, margin, lp_tol))
    primary = next(iter(rescored.values()))
    positions = sum(len(p) for _, p in primary)
    raw = {
        "model": model.name, "gguf": gguf.name, "prompts": len(prompts), "responses": len(transcripts),
        "max_tokens": args.tokens, "positions": positions, "engine_threads": args.engine_threads,
        "seconds": round(time.perf_counter() - t0, 1), "load_average": round(os.getloadavg()[0], 1),
        "settings": per_setting, "max_logprob_drift": drift, "max_flip_gap": flip_gap,
        "recommended": {"margin": margin, "logprob_tolerance": lp_tol},
        "freedom": {str(m): freedom(primary, m) for m in sorted({margin, 1e-3, 1e-2, 0.1, CROSS_ENGINE_MARGIN})},
    }
    print(json.dumps(raw, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")
    if not args.no_doc:
        write_doc(raw, "python bench/same_engine.py " + " ".join(sys.argv[1:]))


def write_doc(raw: dict, command: str) -> None:
    rec, free = raw["recommended"], raw["freedom"]
    body = (
        f"{raw['responses']} honest responses ({raw['prompts']} prompts, greedy and seeded sampling at T = 0.8, "
        f"{raw['max_tokens']} tokens each, {raw['positions']} positions) from the `llamacpp` engine on "
        f"{raw['gguf']} ({raw['engine_threads']} thread, decode), re-executed by `llamacpp_rederive` with each "
        f"verifier setting: `replay` is the engine's schedule (what verifiers run; it calibrates), `prefill` one "
        f"teacher-forced pass, shown for comparison ({raw['seconds']:.0f} s in all; load average "
        f"{raw['load_average']} on {os.cpu_count()} cores: timings mean nothing here).\n\n"
        + table(["verifier setting", "max abs Δ logprob (token + top 20)", "flips", "max flip gap",
                 "false rejects at the recommended tolerance"],
                [[k, v["max_logprob_drift"], v["flips"], v["max_flip_gap"], v["false_rejects"]]
                 for k, v in raw["settings"].items()])
        + f"\n\nRecommended same-engine tolerance (committed in core/consensus/same_engine_calibration.json): "
        f"`margin = {rec['margin']}` logits, `logprob_tolerance = {rec['logprob_tolerance']}`.\n\n"
        "Freedom left to a dishonest node (positions where another token is within the margin):\n\n"
        + table(["margin (logits)", "positions with an alternative within it", "which"],
                [[float(m), f, "same-engine (recommended)" if float(m) == rec["margin"] else
                  "cross-engine (committed table)" if float(m) == CROSS_ENGINE_MARGIN else ""]
                 for m, f in free.items()])
    )
    write_section("same_engine", "Same-engine re-checking (llama.cpp decode vs teacher-forced llama.cpp)", command,
                  body)


if __name__ == "__main__":
    main()
