"""Audit power and false positives on the default model (section "audit" of docs/benchmarks.md).

For each honest set-up and substitute, the provider's greedy answers (tokens, logprobs, top-5)
are generated once in-process and re-scored once with the fp32 reference; per-prompt
statistics are then resampled to estimate, per test, the prompts needed for >= 95% detection
at alpha = 1%, and the false-positive rate on honest set-ups not used for calibration.
Prompts are split: the first half calibrates, the second half is resampled.

    .venv/bin/python bench/audit.py --prompts 16 --tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import table, write_section  # noqa: E402

from specguard.audit import calibrate  # noqa: E402
from specguard.audit.rescore import rescore  # noqa: E402
from specguard.audit.statistics import agreement_test, holm, logprob_test, prompt_logprob_stat  # noqa: E402
from specguard.audit.substitutes import apply_substitute, parse_substitute  # noqa: E402
from specguard.models import load_model  # noqa: E402

SUBSTITUTES = ["q8", "int8", "q4", "q3", "prune:2", "noise:0.01"]
MIXES = ["mix:q4:0.1", "mix:q4:0.3"]
CLASSES = {"fp32": (["fp32-threads"], ["fp32-batch"]), "bf16": (["fp32-threads", "bf16"], ["fp16", "fp32-batch"])}
SIZES = [1, 2, 3, 5, 10, 20, 40]
ALPHA = 0.01


def per_prompt(ref, prompts, outs, top_k):
    """Per-prompt (stat with top-k, stat chosen-only, disagreement margins, positions)."""
    items = [(p, o[0], [list(t) for t in o[2]]) for p, o in zip(prompts, outs, strict=True)]
    t0 = time.perf_counter()
    scored = rescore(ref.model, items, top_k=top_k)
    secs = time.perf_counter() - t0
    rows = []
    for (_t, lps, tops), sc in zip(outs, scored, strict=True):
        full, _, _ = prompt_logprob_stat(lps, tops, sc)
        chosen, _, _ = prompt_logprob_stat(lps, [{} for _ in tops], sc)
        rows.append({"top": full, "chosen": chosen, "margins": [s.margin for s in sc if not s.agrees], "n": len(sc)})
    return rows, sum(len(o[0]) for o in outs), secs


def null_for(cal_rows, margin=1.5):
    worst = max(cal_rows, key=lambda name: np.mean([r["top"] for r in cal_rows[name]]))
    pools = {k: [r[k] * margin for r in cal_rows[worst]] for k in ("top", "chosen")}
    margins = [m for rows in cal_rows.values() for r in rows for m in r["margins"]]
    positions = sum(r["n"] for rows in cal_rows.values() for r in rows)
    tau = max(1e-3, margin * max(margins, default=0.0))
    return pools, tau, min(0.5, 3 / (positions + 1))


def detect(rows, pools, tau, p0):
    """Which tests reject on this resample of prompts."""
    margins = [m for r in rows for m in r["margins"]]
    agree = sum(r["n"] for r in rows) - len(margins)
    tok = agreement_test(margins, agree, tau, p0, ALPHA, 0.05)
    lp_top = logprob_test([r["top"] for r in rows], pools["top"], ALPHA, 0.1, boot=999)
    lp_ch = logprob_test([r["chosen"] for r in rows], pools["chosen"], ALPHA, 0.1, boot=999)
    lp_ch.name = "logprob_chosen"
    both = holm([tok, lp_top], ALPHA)
    return {"tokens": tok.p_value <= ALPHA, "logprob_top5": lp_top.p_value <= ALPHA,
            "logprob_chosen": lp_ch.p_value <= ALPHA, "combined": any(both.values())}


def sampler(test, name):
    """Draw m prompts (with replacement) from one variant's held-back per-prompt rows."""
    return lambda m, r: [test[name][i] for i in r.integers(0, len(test[name]), m)]


def mix_sampler(test, frac):
    """A provider that serves q4 for a `frac` share of prompts and the fp32 reference otherwise."""
    return lambda m, r: [test["q4"][i] if r.random() < frac else test["fp32-threads"][i]
                         for i in r.integers(0, len(test["q4"]), m)]


def power_curve(sample, pools, tau, p0, reps, rng):
    needed = {}
    for m in SIZES:
        hits = {k: 0 for k in ("tokens", "logprob_top5", "logprob_chosen", "combined")}
        for _ in range(reps):
            for k, v in detect(sample(m, rng), pools, tau, p0).items():
                hits[k] += v
        for k, h in hits.items():
            if k not in needed and h / reps >= 0.95:
                needed[k] = m
    return {k: needed.get(k) for k in ("tokens", "logprob_top5", "logprob_chosen", "combined")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", default=str(Path(__file__).resolve().parents[2] / "shared/data/spec_bench/question.jsonl"))
    ap.add_argument("--json", default=None, help="Also write raw results here.")
    args = ap.parse_args()
    ref = load_model(args.model)
    texts = [json.loads(line)["turns"][0] for line in Path(args.questions).read_text().splitlines()[: args.prompts]]
    prompts = [ref.encode_chat([{"role": "user", "content": t}]) for t in texts]
    half = len(prompts) // 2
    eos = ref.eos_token_ids
    t0 = time.perf_counter()
    base = calibrate._generate(ref.model, prompts, args.tokens, eos, 5)
    gen_secs = time.perf_counter() - t0
    rows: dict[str, list] = {}
    scored_tokens = scored_secs = 0.0
    for name in calibrate.SETUPS:
        outs = calibrate._setup_outputs(ref, name, prompts, args.tokens, 5, base)
        rows[name], n, s = per_prompt(ref, prompts, outs, 5)
        scored_tokens += n
        scored_secs += s
        print(name, np.mean([r["top"] for r in rows[name]]), file=sys.stderr)
    for spec in SUBSTITUTES:
        model = apply_substitute(ref, parse_substitute(spec)).model
        outs = calibrate._generate(model, prompts, args.tokens, eos, 5)
        rows[spec], n, s = per_prompt(ref, prompts, outs, 5)
        scored_tokens += n
        scored_secs += s
        print(spec, np.mean([r["top"] for r in rows[spec]]), file=sys.stderr)
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    fp_rates: dict[str, dict] = {}
    for cls, (cal_names, held_out) in CLASSES.items():
        pools, tau, p0 = null_for({n: rows[n][:half] for n in cal_names})
        test = {k: v[half:] for k, v in rows.items()}

        results[cls] = {s: power_curve(sampler(test, s), pools, tau, p0, args.reps, rng) for s in SUBSTITUTES}
        for mix in MIXES:
            results[cls][mix] = power_curve(mix_sampler(test, float(mix.split(":")[-1])), pools, tau, p0, args.reps, rng)
        fps = {k: 0 for k in ("tokens", "logprob_top5", "logprob_chosen", "combined")}
        trials = 0
        for name in held_out:
            for m in (2, 8):
                for _ in range(args.reps):
                    trials += 1
                    for k, v in detect(sampler(test, name)(m, rng), pools, tau, p0).items():
                        fps[k] += v
        fp_rates[cls] = {k: v / trials for k, v in fps.items()}
        fp_rates[cls]["held_out"] = held_out
        fp_rates[cls]["tau"] = tau
    deltas = {k: float(np.mean([r["top"] for r in v])) for k, v in rows.items()}
    agreement = {k: 1 - sum(len(r["margins"]) for r in v) / max(1, sum(r["n"] for r in v)) for k, v in rows.items()}

    def fmt(v):
        return "> 40" if v is None else str(v)

    body = [f"Default model, {args.prompts} prompts from spec_bench (first half calibrates, second half is resampled, "
            f"{args.reps} resamples per size), {args.tokens} greedy tokens each, top-5 logprobs, alpha = 1%, "
            f"margin x1.5 on the worst calibrated honest set-up. Sizes tried: {SIZES}. "
            "A cell is the smallest number of prompts with >= 95% detection.\n"]
    body.append(table(["variant", "mean abs delta (top-5)", "token agreement"],
                      [[k, f"{deltas[k]:.4g}", f"{agreement[k]:.1%}"] for k in rows]))
    for cls in CLASSES:
        body.append(f"\n**Honest class {cls}** (calibrated on {', '.join(CLASSES[cls][0])}; held out: "
                    f"{', '.join(CLASSES[cls][1])}; near-tie threshold {fp_rates[cls]['tau']:.3g})\n")
        body.append(table(["substitute", "tokens only", "logprob top-5", "logprob chosen only", "combined (Holm)"],
                          [[s, *(fmt(v[k]) for k in ("tokens", "logprob_top5", "logprob_chosen", "combined"))]
                           for s, v in results[cls].items()]))
        fp = fp_rates[cls]
        body.append(f"\nFalse-positive rate on held-out honest set-ups (2 and 8 prompts): tokens {fp['tokens']:.1%}, "
                    f"logprob top-5 {fp['logprob_top5']:.1%}, chosen-only {fp['logprob_chosen']:.1%}, "
                    f"combined {fp['combined']:.1%}.\n")
    body.append(f"\nRe-scoring throughput: {scored_tokens / scored_secs:.0f} tokens/s (teacher-forced, batch 1); "
                f"reference greedy generation: {args.prompts * args.tokens / gen_secs:.0f} tokens/s.\n")
    write_section("audit", "Audit: prompts needed to detect substitutes",
                  f".venv/bin/python bench/audit.py --prompts {args.prompts} --tokens {args.tokens} --reps {args.reps}",
                  "\n".join(body))
    if args.json:
        Path(args.json).write_text(json.dumps({"power": results, "false_positives": fp_rates, "deltas": deltas,
                                               "agreement": agreement}, indent=1))
    print("\n".join(body))


if __name__ == "__main__":
    main()
