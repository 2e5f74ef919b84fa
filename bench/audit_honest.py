"""What stays detectable against the cross-engine honest class (section "audit-honest" of docs/benchmarks.md).

Honest engines (llama.cpp on the default model's own GGUF, torch fp32/bf16) and substitutes
(q8, int8, q4 re-quantization, prune:2, another model) answer the same prompts greedily; every
answer is re-scored with the fp32 reference exactly as `audit run` does. Per variant: share of
hard disagreements (reference margin >= tau of the class) among decisive positions, mean
|delta logprob| (chosen + top-5), and the p-values of the token-agreement and logprob tests
against each honest class's null from the committed calibration (the same prompts the audit
cycles by default, so the honest engines' rows are in-sample for the calibration).

    .venv/bin/python bench/audit_honest.py --tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _report import table, write_section  # noqa: E402

from specguard.audit import calibrate  # noqa: E402
from specguard.audit.rescore import rescore  # noqa: E402
from specguard.audit.run import DEFAULT_PROMPTS  # noqa: E402
from specguard.audit.statistics import agreement_test, logprob_test, prompt_logprob_stat  # noqa: E402
from specguard.audit.substitutes import apply_substitute, parse_substitute  # noqa: E402
from specguard.drafters.llamacpp import target_gguf  # noqa: E402
from specguard.models import LoadedModel, load_model  # noqa: E402

SUBSTITUTES = ["q8", "int8", "q4", "prune:2"]
ALPHA = 0.01


def other_model(ref: LoadedModel) -> LoadedModel:
    """A different (random, 4-layer) Llama with the reference's tokenizer: 'another model'."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=ref.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                      bos_token_id=ref.tokenizer.bos_token_id, eos_token_id=ref.tokenizer.eos_token_id)
    torch.manual_seed(1)
    return LoadedModel(name="other", model=LlamaForCausalLM(cfg).eval(), tokenizer=ref.tokenizer, source="random")


def stats(ref, prompts, outs):
    items = [(p, o[0], [list(t) for t in o[2]]) for p, o in zip(prompts, outs, strict=True)]
    scored = rescore(ref.model, items, top_k=5)
    per, margins, agree = [], [], 0
    for (_t, lps, tops), sc in zip(outs, scored, strict=True):
        s, _, _ = prompt_logprob_stat(lps, tops, sc)
        per.append(s)
        margins += [x.margin for x in sc if not x.agrees]
        agree += sum(1 for x in sc if x.agrees)
    return per, margins, agree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--calibration", default=None, help="default: the committed calibration of the reference")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ref = load_model()
    cal_path = args.calibration or calibrate.committed(ref)
    cal = calibrate.load(Path(cal_path), ref)
    prompts = [ref.encode_chat([{"role": "user", "content": t}]) for t in DEFAULT_PROMPTS]
    eos = ref.eos_token_ids
    t0 = time.perf_counter()
    outs = {"llama.cpp (honest)": calibrate.llamacpp_generate(target_gguf(ref), prompts, args.tokens, eos, 5),
            "torch bf16 (honest)": calibrate._setup_outputs(ref, "bf16", prompts, args.tokens, 5, [])}
    for spec in SUBSTITUTES:
        outs[spec] = calibrate._generate(apply_substitute(ref, parse_substitute(spec)).model, prompts, args.tokens, eos, 5)
    outs["another model"] = calibrate._generate(other_model(ref).model, prompts, args.tokens, eos, 5)
    nulls = {c: calibrate.honest_null(cal, c) for c in ("cross-engine", "bf16")}
    rows, raw = [], {}
    for name, o in outs.items():
        per, margins, agree = stats(ref, prompts, o)
        line = [name, f"{np.mean(per):.4g}"]
        raw[name] = {"mean_abs_delta": float(np.mean(per))}
        for cls, null in nulls.items():
            tok = agreement_test(margins, agree, null["tau"], null["p0"], ALPHA, 0.05)
            lp = logprob_test(per, null["pool"], ALPHA, 0.1)
            line += [f"{tok.statistic:.1%}", f"{tok.p_value:.2g}", f"{lp.p_value:.2g}"]
            raw[name][cls] = {"hard_rate": tok.statistic, "p_tokens": tok.p_value, "p_logprob": lp.p_value}
        rows.append(line)
        print(line, file=sys.stderr)
    secs = time.perf_counter() - t0
    n = nulls["cross-engine"]
    body = [f"Default model, the {len(prompts)} built-in audit prompts, {args.tokens} greedy tokens, top-5 logprobs; "
            f"nulls from the committed calibration ({cal['prompts']} prompts x {cal['max_tokens']} tokens). "
            f"Cross-engine class: tau {n['tau']:.3g}, p0 {n['p0']:.3g}, logprob pool mean "
            f"{np.mean(n['pool']):.3g} (worst set-up {n['worst_setup']}); bf16 class: tau {nulls['bf16']['tau']:.3g}, "
            f"p0 {nulls['bf16']['p0']:.3g}, pool mean {np.mean(nulls['bf16']['pool']):.3g}. "
            f"p-values are for these {len(prompts)} prompts (alpha 1%). Total {secs:.0f} s.\n",
            table(["variant", "mean abs delta", "hard rate (cross-engine tau)", "p tokens (cross-engine)",
                   "p logprob (cross-engine)", "hard rate (bf16 tau)", "p tokens (bf16)", "p logprob (bf16)"], rows)]
    write_section("audit-honest", "Audit: what stays detectable against the cross-engine honest class",
                  f".venv/bin/python bench/audit_honest.py --tokens {args.tokens}", "\n".join(body))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    print("\n".join(body))


if __name__ == "__main__":
    main()
