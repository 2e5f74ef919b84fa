"""`audit monitor` power and false alarms on the default model (sub-section of "audit" in docs/benchmarks.md).

The provider's greedy answers (tokens, logprobs, top-5) are generated once in-process per set-up:
the baseline (fp32, default threads, batched greedy generation), honest variations (one thread;
batch-4 left-padded re-scoring), a change of numerics (bf16) and substitutes. The fp32 CPU
engine is deterministic, so R baseline repeats (and C check repeats) of one set-up are copies of
its one answer — exactly what R queries of a deterministic provider return. Resampling prompt
subsets then gives, per set-up, the share of checks that flag a change at alpha = 1%, and the
smallest number of prompts flagged in >= 95% of subsets.

    .venv/bin/python bench/monitor.py --prompts 12 --tokens 16 --reps 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from _report import table, write_section  # noqa: E402
from _spec_bench import QUESTIONS, first_turns

from specguard.audit import calibrate  # noqa: E402
from specguard.audit.monitor import evaluate  # noqa: E402
from specguard.audit.monitor_stats import Position, Run  # noqa: E402
from specguard.audit.substitutes import apply_substitute, mixed_in, parse_substitute  # noqa: E402
from specguard.models import load_model  # noqa: E402

HONEST = ["fp32-threads", "fp32-batch"]
CHANGES = ["int8", "q4", "prune:2", "mix:q4:0.1", "noise:0.1", "bf16"]
LABELS = {"noise:0.1": "other model (stand-in: noise:0.1)", "bf16": "bf16 (numerics change)"}
SIZES = [2, 3, 5, 8, 12]
ALPHA = 0.01


def to_runs(ref, outs) -> list[Run]:
    runs = []
    for toks, lps, tops in outs:
        positions = tuple(Position(f"t{t}", float(lp), {f"t{k}": float(v) for k, v in top.items() if k != t})
                          for t, lp, top in zip(toks, lps, tops, strict=True))
        runs.append(Run(ref.tokenizer.decode(toks), positions))
    return runs


def generate(ref, name, prompts, tokens, base, cache):
    if name in HONEST or name == "bf16":
        return calibrate._setup_outputs(ref, name, prompts, tokens, 5, base)
    sub = parse_substitute(name)
    inner = sub.inner.spec if sub.inner else sub.spec
    if inner not in cache:
        model = apply_substitute(ref, parse_substitute(inner)).model
        cache[inner] = calibrate._generate(model, prompts, tokens, ref.eos_token_ids, 5)
    outs = cache[inner]
    if sub.kind == "mix":  # which prompts get the substitute: the simulator's rule (hash of the request)
        keys = [json.dumps(p) for p in prompts]
        outs = [o if mixed_in(sub, k) else b for o, b, k in zip(outs, base, keys, strict=True)]
    return outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="Baseline repeats R.")
    ap.add_argument("--check-repeats", type=int, default=2, help="Check repeats C.")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--skip", default="", help="Comma-separated set-ups to leave out (e.g. bf16 on a slow box).")
    ap.add_argument("--questions", default=str(QUESTIONS))
    args = ap.parse_args()
    ref = load_model(args.model)
    texts = first_turns(Path(args.questions))[: args.prompts]
    prompts = [ref.encode_chat([{"role": "user", "content": t}]) for t in texts]
    t0 = time.perf_counter()
    base = calibrate._generate(ref.model, prompts, args.tokens, ref.eos_token_ids, 5)
    secs = time.perf_counter() - t0
    runs = {"fp32": to_runs(ref, base)}
    skip = set(filter(None, args.skip.split(",")))
    global CHANGES
    CHANGES = [c for c in CHANGES if c not in skip]
    cache: dict = {}
    for name in HONEST + CHANGES:
        runs[name] = to_runs(ref, generate(ref, name, prompts, args.tokens, base, cache))
        print(name, "generated", file=sys.stderr)
    rng = np.random.default_rng(0)
    r, c = args.repeats, args.check_repeats
    rows, fa_rows = [], []
    for name in HONEST + CHANGES:
        rates = {}
        for m in [s for s in SIZES if s <= args.prompts]:
            hits = 0
            for rep in range(args.reps):
                idx = rng.choice(args.prompts, size=m, replace=False)
                b = [[runs["fp32"][i]] * r for i in idx]
                ch = [[runs[name][i]] * c for i in idx]
                hits += evaluate(b, ch, 1e-3, ALPHA, seed=rep, draws=2000)["verdict"] == "change"
            rates[m] = hits / args.reps
        needed = next((str(m) for m, v in rates.items() if v >= 0.95), f"> {max(rates)}")
        diverged = float(np.mean([a.positions[i].token != bb.positions[i].token
                                  for a, bb in zip(runs[name], runs["fp32"], strict=True)
                                  for i in range(min(len(a.positions), len(bb.positions)))]))
        row = [LABELS.get(name, name), f"{1 - diverged:.1%}"] + [f"{rates[m]:.0%}" for m in rates]
        (fa_rows if name in HONEST else rows).append(row + ([] if name in HONEST else [needed]))
    sizes = [s for s in SIZES if s <= args.prompts]
    head = ["set-up", "positions equal to baseline (free-running)"] + [f"flagged, {m} prompts" for m in sizes]
    body = (
        f"Default model, {args.prompts} prompts from spec_bench, {args.tokens} greedy tokens, top-5 logprobs, "
        f"baseline repeats R = {r}, check repeats C = {c}, tolerance 1e-3 nats, alpha = {ALPHA:g}, "
        f"{args.reps} random prompt subsets per size. Baseline generation: {args.prompts * args.tokens / secs:.0f} "
        "tokens/s (batched). With a deterministic provider the smallest reachable p-value is "
        f"(1/C(R+C, C))^prompts = {1 / math.comb(r + c, c):.3f}^prompts here.\n\n"
        "**Changes** (flagged share; last column: smallest number of prompts flagged in >= 95% of subsets)\n\n"
        + table(head + ["prompts needed"], rows)
        + "\n\n**Honest variations** (false alarms: any flagged share above 0% is a false alarm)\n\n"
        + table(head, fa_rows)
        + f"\n\nLoad average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        "counts, not timings, are the result. "
        "Calibration under a *nondeterministic* provider is checked on synthetic answers in "
        "tests/audit/test_monitor.py (1500 honest trials at alpha = 5%: 5.1% false alarms).\n"
    )
    print(body)
    write_section("monitor", "Audit monitor: prompts needed to flag a silent change",
                  " ".join(["bench/monitor.py", *sys.argv[1:]]).replace("bench/", ".venv/bin/python bench/", 1), body)


if __name__ == "__main__":
    main()
