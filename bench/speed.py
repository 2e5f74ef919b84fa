"""Decoding speed on a fixed Spec-Bench sample: transformers, llama.cpp and specguard's drafters.

Greedy, N tokens per prompt, every Spec-Bench category. Methods: transformers plain
`generate`, transformers prompt lookup (`prompt_lookup_num_tokens`), llama.cpp plain greedy
decoding of the same GGUF (`--llama-plain`, needs llama-cpp-python), and specguard with each
drafter (`llamacpp` is the untrusted llama.cpp drafter). Every method's output is compared with
transformers plain decoding (near-tie flips are counted). Writes the `--section` ("speed")
section of docs/benchmarks.md.

    python bench/speed.py [--per-category 2] [--tokens 128] [--drafters none,ngram,early-exit,draft-model]
    python bench/speed.py --drafters none,ngram,llamacpp --llama-plain --section speed-llamacpp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, write_section  # noqa: E402

from specguard.engine.factory import make_drafter  # noqa: E402
from specguard.engine.sampling import NEAR_TIE_EPSILON  # noqa: E402
from specguard.engine.scoring import score  # noqa: E402
from specguard.engine.speculative import SpeculativeEngine  # noqa: E402
from specguard.models import load_model  # noqa: E402
from specguard.transcript import SamplingParams  # noqa: E402

QUESTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spec_bench" / "question.jsonl"


def sample(per_category: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    by_cat: dict[str, list[str]] = {}
    for row in rows:
        by_cat.setdefault(row["category"], []).append(row["turns"][0])
    return [(cat, by_cat[cat][i]) for cat in sorted(by_cat) for i in range(per_category)]


def hf(model, ids, n, lookup: int | None):
    kw = {"prompt_lookup_num_tokens": lookup} if lookup else {}
    t = time.perf_counter()
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, use_cache=True, **kw)
    return out[0, len(ids):].tolist(), time.perf_counter() - t


def llama_plain(llama, ids: list[int], n: int, eos: set[int]) -> tuple[list[int], float]:
    """llama.cpp greedy decoding (argmax of its logits), KV cache on, stopping at EOS like the others."""
    import numpy as np

    vocab = int(llama.n_vocab())
    llama.reset()
    t = time.perf_counter()
    out: list[int] = []
    pending = list(ids)
    while len(out) < n:
        llama.eval(pending)
        logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,))
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok in eos:
            break
        pending = [tok]
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--drafters", default="none,ngram,early-exit,draft-model")
    ap.add_argument("--exit-layer", type=int, default=20)
    ap.add_argument("--llama-plain", action="store_true", help="also time llama.cpp plain greedy decoding")
    ap.add_argument("--llama-threads", type=int, default=1, help="llama.cpp threads (plain and drafter)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--section", default="speed", help="docs/benchmarks.md section to write")
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model()
    prompts = sample(args.per_category)
    encoded = [target.encode_chat([{"role": "user", "content": text[:2000]}]) for _, text in prompts]
    eos = target.eos_token_ids
    # warm up
    SpeculativeEngine(target).generate(encoded[0], SamplingParams(max_tokens=8))

    # every method is a function ids -> (output ids, seconds, steps, drafted, accepted); the methods run
    # interleaved, prompt by prompt, so a load spike on a shared machine hits all of them alike
    Method = Callable[[list[int]], tuple[list[int], float, int, int, int]]
    methods: dict[str, Method] = {}

    def hf_method(lookup: int | None) -> Method:
        def run(ids):
            out, s = hf(target.model, ids, args.tokens, lookup)
            return out, s, len(out) if not lookup else 0, 0, 0
        return run

    methods["transformers generate"] = hf_method(None)
    methods["transformers prompt lookup (10)"] = hf_method(10)
    if args.llama_plain:
        from specguard.drafters.llamacpp import llama_cpp_module, target_gguf

        llama = llama_cpp_module().Llama(model_path=str(target_gguf(target)), n_ctx=4096, n_threads=args.llama_threads,
                                         n_threads_batch=args.llama_threads, verbose=False)
        llama_plain(llama, encoded[0], 8, eos)  # warm up
        plural = "s" if args.llama_threads > 1 else ""

        def run_llama(ids):
            out, s = llama_plain(llama, ids, args.tokens, eos)
            return out, s, 0, 0, 0

        methods[f"llama.cpp plain (Q4_1 GGUF, {args.llama_threads} thread{plural})"] = run_llama

    def spec_method(name: str) -> Method:
        options = {"exit_layer": args.exit_layer, "draft_model": target}
        if name == "llamacpp":
            options = {"n_threads": args.llama_threads}

        def run(ids):
            engine = SpeculativeEngine(target, make_drafter(name, target, options))
            t = engine.generate(ids, SamplingParams(max_tokens=args.tokens))
            m = t.metrics()
            return t.output_ids, t.seconds, m["steps"], m["drafted_tokens"], m["accepted_tokens"]
        return run

    for name in args.drafters.split(","):
        label = f"specguard {name}" + (" (draft = target itself)" if name == "draft-model" else "") + (
            f" (exit layer {args.exit_layer}/30)" if name == "early-exit" else "") + (
            f" (untrusted, Q4_1 GGUF, {args.llama_threads} thread)" if name == "llamacpp" else "")
        methods[label] = spec_method(name)

    def report(done: int) -> str:
        partial = "" if done == len(encoded) else f"; partial: {done} of {len(encoded)} prompts done"
        base = totals["transformers generate"]["tok"] / totals["transformers generate"]["s"]
        rows = []
        for k, v in totals.items():
            tps = v["tok"] / v["s"]
            mat = f"{v['tok'] / v['steps']:.2f}" if v["steps"] else "-"
            acc = f"{v['accepted'] / v['drafted']:.0%}" if v["drafted"] else "-"
            ties = v["ties"] if k.startswith("specguard") else "-"
            rows.append([k, f"{tps:.1f}", f"{tps / base:.2f}x", mat, acc, f"{v['same']}/{done}", ties])
        body = (
            f"SmolLM2-135M-Instruct (fp32, dequantized from the Q4_1 GGUF), greedy, {args.tokens} tokens, "
            f"{len(encoded)} Spec-Bench prompts ({args.per_category} per category, first turn{partial}); methods interleaved "
            f"prompt by prompt; torch threads {torch.get_num_threads()}.\n\n"
            + table(["method", "tokens/s", "vs transformers", "tokens/step", "draft acceptance",
                     "identical to plain", "near-tie flips"], rows)
            + "\n\nTokens per step counts the bonus token (as Spec-Bench and vLLM do). "
            "'identical to plain' compares with transformers plain greedy output; a 'near-tie flip' is a "
            f"difference whose first position has a reference top-2 margin below {NEAR_TIE_EPSILON}. Draft "
            "acceptance is accepted / drafted tokens. llama.cpp plain runs the 4-bit GGUF with its own kernels: "
            "its output is a different implementation's and is not expected to be identical.\n"
            + (f"\n{args.note}\n" if args.note else "")
        )
        title = "Decoding speed (issue: foundation)" if args.section == "speed" else f"Decoding speed ({args.section})"
        write_section(args.section, title, "python bench/speed.py " + " ".join(sys.argv[1:]), body)
        return body

    totals = {k: {"tok": 0, "s": 0.0, "steps": 0, "drafted": 0, "accepted": 0, "same": 0, "ties": 0} for k in methods}
    for n, ids in enumerate(encoded):
        ref = None
        for label, run in methods.items():
            out, s, steps, drafted, accepted = run(ids)
            if ref is None:
                ref = out  # transformers plain greedy is the reference
            tot = totals[label]
            tot["tok"] += len(out)
            tot["s"] += s
            tot["steps"] += steps
            tot["drafted"] += drafted
            tot["accepted"] += accepted
            if out == ref:
                tot["same"] += 1
            elif label.startswith("specguard"):
                i = next((j for j, (a, b) in enumerate(zip(out, ref, strict=False)) if a != b), None)
                if i is not None and score(target, ids, ref[: i + 1]).positions[i].margin < NEAR_TIE_EPSILON:
                    tot["ties"] += 1
        print(f"prompt {n + 1}/{len(encoded)}: " + ", ".join(
            f"{k.split(' (')[0]} {v['tok'] / max(v['s'], 1e-9):.1f}" for k, v in totals.items()), flush=True)

        body = report(n + 1)
    print(body)


if __name__ == "__main__":
    main()
