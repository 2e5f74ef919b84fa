"""Audit power and false positives on the default model (section "audit" of docs/benchmarks.md).

For each honest set-up and substitute, the provider's greedy answers (tokens, logprobs, top-5)
are generated once in-process and re-scored once with the fp32 reference; per-prompt
statistics are then resampled to estimate, per test, the prompts needed for >= 95% detection
at alpha = 1%, and the false-positive rate on honest set-ups not used for calibration.
Prompts are split: the first half calibrates, the second half is resampled.

    .venv/bin/python bench/audit.py --prompts 16 --tokens 32
    .venv/bin/python bench/audit.py --sampled --prompts 12 --tokens 16   # seeded-exact and RUT (section "audit-sampled")
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
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


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", default=str(Path(__file__).resolve().parents[2] / "shared/data/spec_bench/question.jsonl"))
    ap.add_argument("--json", default=None, help="Also write raw results here.")
    ap.add_argument("--sampled", action="store_true", help="Run the sampled tests (seeded-exact, RUT) instead.")
    ap.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of --sampled.")
    ap.add_argument("--rut-samples", type=int, default=10, help="Reference samples per prompt (RUT).")
    ap.add_argument("--rut-provider", type=int, default=3, help="Provider samples per prompt (RUT resampling pool).")
    return ap.parse_args()


def _prompts(ref, args) -> list[list[int]]:
    texts = [json.loads(line)["turns"][0] for line in Path(args.questions).read_text().splitlines()[: args.prompts]]
    return [ref.encode_chat([{"role": "user", "content": t}]) for t in texts]


def _add_rows(rows: dict, timing: list[float], ref, prompts, name: str, outs) -> None:
    rows[name], n, secs = per_prompt(ref, prompts, outs, 5)
    timing[0] += n
    timing[1] += secs
    print(name, np.mean([r["top"] for r in rows[name]]), file=sys.stderr)


def _score_variants(ref, prompts, tokens):
    """Per-prompt rows of every honest set-up and substitute; (rows, scored tokens/s, generation tokens/s)."""
    eos = ref.eos_token_ids
    t0 = time.perf_counter()
    base = calibrate._generate(ref.model, prompts, tokens, eos, 5)
    gen_secs = time.perf_counter() - t0
    rows: dict[str, list] = {}
    timing = [0.0, 0.0]  # scored tokens, seconds
    for name in calibrate.SETUPS:
        _add_rows(rows, timing, ref, prompts, name, calibrate._setup_outputs(ref, name, prompts, tokens, 5, base))
    for spec in SUBSTITUTES:
        model = apply_substitute(ref, parse_substitute(spec)).model
        _add_rows(rows, timing, ref, prompts, spec, calibrate._generate(model, prompts, tokens, eos, 5))
    return rows, timing[0] / timing[1], len(prompts) * tokens / gen_secs


def _false_positives(test, held_out, pools, tau, p0, reps, rng) -> dict:
    fps = {k: 0 for k in ("tokens", "logprob_top5", "logprob_chosen", "combined")}
    trials = 0
    for name in held_out:
        for m in (2, 8):
            for _ in range(reps):
                trials += 1
                for k, v in detect(sampler(test, name)(m, rng), pools, tau, p0).items():
                    fps[k] += v
    return {**{k: v / trials for k, v in fps.items()}, "held_out": held_out, "tau": tau}


def _power_and_false_positives(rows, half, reps):
    """Per honest class: prompts needed per substitute, and the false-positive rates on held-out set-ups."""
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    fp_rates: dict[str, dict] = {}
    for cls, (cal_names, held_out) in CLASSES.items():
        pools, tau, p0 = null_for({n: rows[n][:half] for n in cal_names})
        test = {k: v[half:] for k, v in rows.items()}
        results[cls] = {s: power_curve(sampler(test, s), pools, tau, p0, reps, rng) for s in SUBSTITUTES}
        for mix in MIXES:
            results[cls][mix] = power_curve(mix_sampler(test, float(mix.split(":")[-1])), pools, tau, p0, reps, rng)
        fp_rates[cls] = _false_positives(test, held_out, pools, tau, p0, reps, rng)
    return results, fp_rates


def _fmt(v) -> str:
    return "> 40" if v is None else str(v)


def _section(args, rows, results, fp_rates, speeds) -> tuple[str, dict, dict]:
    deltas = {k: float(np.mean([r["top"] for r in v])) for k, v in rows.items()}
    agreement = {k: 1 - sum(len(r["margins"]) for r in v) / max(1, sum(r["n"] for r in v)) for k, v in rows.items()}
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
                          [[s, *(_fmt(v[k]) for k in ("tokens", "logprob_top5", "logprob_chosen", "combined"))]
                           for s, v in results[cls].items()]))
        fp = fp_rates[cls]
        body.append(f"\nFalse-positive rate on held-out honest set-ups (2 and 8 prompts): tokens {fp['tokens']:.1%}, "
                    f"logprob top-5 {fp['logprob_top5']:.1%}, chosen-only {fp['logprob_chosen']:.1%}, "
                    f"combined {fp['combined']:.1%}.\n")
    scoring, generation = speeds
    body.append(f"\nRe-scoring throughput: {scoring:.0f} tokens/s (teacher-forced, batch 1); "
                f"reference greedy generation: {generation:.0f} tokens/s.\n")
    return "\n".join(body), deltas, agreement


def main() -> None:
    args = _args()
    if args.sampled:
        sampled_main(args)
        return
    ref = load_model(args.model)
    prompts = _prompts(ref, args)
    rows, scoring, generation = _score_variants(ref, prompts, args.tokens)
    results, fp_rates = _power_and_false_positives(rows, len(prompts) // 2, args.reps)
    body, deltas, agreement = _section(args, rows, results, fp_rates, (scoring, generation))
    write_section("audit", "Audit: prompts needed to detect substitutes",
                  f".venv/bin/python bench/audit.py --prompts {args.prompts} --tokens {args.tokens} --reps {args.reps}",
                  body)
    if args.json:
        Path(args.json).write_text(json.dumps({"power": results, "false_positives": fp_rates, "deltas": deltas,
                                               "agreement": agreement}, indent=1))
    print(body)


# --- sampled tests (seeded-exact, RUT): `--sampled` writes the section "audit-sampled" ----------------

SAMPLED_VARIANTS = ["int8", "q4", "prune:2", "other-model"]
SAMPLED_SIZES = [1, 2, 3, 5, 10, 20, 40]


def _other_model(ref):
    """A different model with the same tokenizer: a random 4-layer Llama (no second checkpoint on this box)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from specguard.models import LoadedModel

    cfg = LlamaConfig(vocab_size=ref.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      initializer_range=0.1, eos_token_id=sorted(ref.eos_token_ids)[0], tie_word_embeddings=False)
    torch.manual_seed(1)
    return LoadedModel(name="other-model", model=LlamaForCausalLM(cfg).eval(), tokenizer=ref.tokenizer,
                       source="random")


def _bf16(ref):
    import copy

    import torch

    from specguard.models import LoadedModel

    return LoadedModel(name="bf16", model=copy.deepcopy(ref.model).to(torch.bfloat16).eval(), tokenizer=ref.tokenizer,
                       source="bf16")


def _seeded_rows(ref, model, prompts, tokens, temperature, threads=None):
    """Per prompt: (decisive positions, hard mismatches, largest margin at a mismatch) of `model`'s seeded answer."""
    import torch

    from specguard.audit.sampled import SEEDED_TAG, derive_seed, seeded_params
    from specguard.engine.speculative import SpeculativeEngine

    old = torch.get_num_threads()
    rows = []
    for i, pids in enumerate(prompts):
        params = seeded_params(tokens, temperature, 1.0, 0, derive_seed(0, SEEDED_TAG, i))
        if threads:
            torch.set_num_threads(threads)
        ids = list(SpeculativeEngine(model).generate(pids, params).output_ids)
        torch.set_num_threads(old)
        stopped = bool(ids) and ids[-1] in ref.eos_token_ids
        ids = ids[:-1] if stopped else ids
        rows.append({"n": len(ids), "margins": _mismatch_margins(ref, pids, ids, params)})
    return rows


def _mismatch_margins(ref, pids, ids, params):
    from specguard.audit.rescore import rescore

    if not ids:
        return []
    return [s.margin for s in rescore(ref.model, [(pids, ids, None)], params=params, top_k=0)[0] if not s.agrees]


def _rut_ranks(ref, model, prompts, tokens, temperature, m, n_provider, rng):
    from specguard.audit.sampled import answer_ids, loglik, reference_samples, rut_rank

    us = []
    for i, pids in enumerate(prompts):
        refs = reference_samples(ref, pids, m, tokens, temperature, 1.0, 10_000 + i)
        ref_ll = loglik(ref, pids, [answer_ids(ref, t, s) for t, s in refs])
        prov = reference_samples(model, pids, n_provider, tokens, temperature, 1.0, 20_000 + i)
        prov_ll = loglik(ref, pids, [answer_ids(ref, t, s) for t, s in prov])
        us.append([rut_rank(x, ref_ll, rng) for x in prov_ll])
    return us


def _draw_seeded(flags: dict, name: str, m: int, r) -> list[bool]:
    if name.startswith("mix:"):
        return [flags["q4"][i] if r.random() < 0.1 else flags["fp32-threads"][i]
                for i in r.integers(0, len(flags["q4"]), m)]
    return [flags[name][i] for i in r.integers(0, len(flags[name]), m)]


def _draw_rut(rut: dict, name: str, m: int, r) -> list[float]:
    def one(n):
        i = r.integers(0, len(rut[n]))
        return rut[n][i][r.integers(0, len(rut[n][i]))]

    if name.startswith("mix:"):
        return [one("q4") if r.random() < 0.1 else one("fp32-threads") for _ in range(m)]
    return [one(name) for _ in range(m)]


def _seeded_rejects(sample) -> bool:
    return any(sample)


def _rut_rejects(sample) -> bool:
    from specguard.audit.sampled import cvm_pvalue

    return cvm_pvalue(sample)[1] <= ALPHA


def _needed(draw, test, name: str, reps: int, rng) -> int | None:
    """The smallest size in SAMPLED_SIZES at which `test` rejects >= 95% of `reps` draws."""
    for m in SAMPLED_SIZES:
        hits = sum(test(draw(name, m, rng)) for _ in range(reps))
        if hits / reps >= 0.95:
            return m
    return None


def _sampled_models(ref) -> dict:
    models = {"fp32-threads": ref, "bf16": _bf16(ref), "other-model": _other_model(ref)}
    for spec in ("int8", "q4", "prune:2"):
        models[spec] = apply_substitute(ref, parse_substitute(spec))
    return models


def _seeded_flags(ref, models: dict, prompts, tokens: int, temp: float, half: int) -> tuple[dict, float, dict]:
    """Seeded rows per variant, the near-tie margin from the calibration half, and per held-out prompt: rejects?"""
    seeded = {}
    for name, model in models.items():
        seeded[name] = _seeded_rows(ref, model, prompts, tokens, temp, threads=1 if name == "fp32-threads" else None)
        print("seeded", name, sum(len(r["margins"]) for r in seeded[name]), file=sys.stderr)
    # bf16-honest class: tau = 1.5 x the largest margin at an honest mismatch on the calibration half
    honest_margins = [m for n in ("fp32-threads", "bf16") for r in seeded[n][:half] for m in r["margins"]]
    tau = max(1e-3, 1.5 * max(honest_margins, default=0.0))
    flags = {k: [any(m >= tau for m in r["margins"]) for r in v[half:]] for k, v in seeded.items()}
    return seeded, tau, flags


def sampled_main(args) -> None:
    ref = load_model(args.model)
    prompts = _prompts(ref, args)
    half = len(prompts) // 2
    t_start = time.perf_counter()
    models = _sampled_models(ref)
    temp = args.temperature
    seeded, tau, flags = _seeded_flags(ref, models, prompts, args.tokens, temp, half)
    rng = np.random.default_rng(0)
    rut = {name: _rut_ranks(ref, model, prompts, args.tokens, temp, args.rut_samples, args.rut_provider, rng)
           for name, model in models.items()}
    print("rut done", file=sys.stderr)
    draw_seeded, draw_rut = functools.partial(_draw_seeded, flags), functools.partial(_draw_rut, rut)
    rows = []
    for name in [*SAMPLED_VARIANTS, "mix:q4:0.1"]:
        s = _needed(draw_seeded, _seeded_rejects, name, args.reps, rng)
        r = _needed(draw_rut, _rut_rejects, name, args.reps, rng)
        rows.append([name, "> 40" if s is None else s, "> 40" if r is None else r])
    fa = {}
    for name in ("fp32-threads", "bf16"):
        trials = [(m, args.reps) for m in (2, 8)]
        fa[name] = (sum(_seeded_rejects(draw_seeded(name, m, rng)) for m, n in trials for _ in range(n)) / (2 * args.reps),
                    sum(_rut_rejects(draw_rut(name, m, rng)) for m, n in trials for _ in range(n)) / (2 * args.reps))
    mism = {k: sum(sum(1 for m in r["margins"] if m >= tau) for r in v) / max(1, sum(r["n"] for r in v))
            for k, v in seeded.items()}
    secs = time.perf_counter() - t_start
    body = [f"Model `{args.model}`, {args.prompts} spec_bench prompts ({half} calibrate the seeded near-tie margin, the rest "
            f"are resampled, {args.reps} resamples per size), {args.tokens} sampled tokens at temperature {temp}, "
            f"alpha = 1%. Seeded-exact: the variant generates with specguard's seeded sampling (the engine) and the "
            f"fp32 reference re-derives every token (near-tie margin tau_s = {tau:.3g}, from the bf16-honest class: "
            f"fp32 with one thread and a bf16 copy). RUT: {args.rut_provider} sampled answers per prompt ranked "
            f"among {args.rut_samples} reference samples by reference log-likelihood, Cramer-von Mises; resampled "
            "from a pool of prompts x answers, so the pool must be large (a small pool repeats ranks and "
            "overstates both power and false alarms). "
            "`other-model` is a random 4-layer Llama with the same tokenizer (no second checkpoint on this box), so "
            "it is an easy case. A cell is the smallest number of prompts with >= 95% detection "
            f"(sizes {SAMPLED_SIZES}). Total time {secs:.0f} s. Load average at the end "
            f"of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; times depend on the load, "
            "counts do not.\n"]
    body.append(table(["variant", "seeded-exact: hard mismatches / decisive token"],
                      [[k, f"{v:.2%}"] for k, v in mism.items()]))
    body.append("")
    body.append(table(["substitute", "seeded-exact (prompts)", "RUT (prompts)"], rows))
    body.append(f"\nFalse alarms on honest set-ups (2 and 8 prompts): seeded-exact fp32-threads {fa['fp32-threads'][0]:.1%}, "
                f"bf16 {fa['bf16'][0]:.1%}; RUT fp32-threads {fa['fp32-threads'][1]:.1%}, bf16 {fa['bf16'][1]:.1%}.\n")
    body.append("Published anchors: Token-DiFR catches 4-bit quantization at AUC > 0.999 within ~300 tokens (shared "
                "seed, sampled outputs); Model Equality Testing (MMD) reaches median power 77% with ~10 samples per "
                "prompt; RUT (ICLR 2026) needs one ordinary sampled query per prompt. The greedy token and logprob "
                "tests are in the section \"Audit: prompts needed to detect substitutes\" above.\n")
    write_section("audit-sampled", "Audit: sampled tests (seeded-exact, RUT)",
                  f".venv/bin/python bench/audit.py --sampled --model {args.model} --prompts {args.prompts} "
                  f"--tokens {args.tokens} --temperature {args.temperature} "
                  f"--reps {args.reps} --rut-samples {args.rut_samples}", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
