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
    ap.add_argument("--section", default="speed", help="docs/benchmarks.md section to write")
    args = ap.parse_args()
    target = load_model()
    prompts = sample(args.per_category)
    encoded = [target.encode_chat([{"role": "user", "content": text[:2000]}]) for _, text in prompts]
    # warm up
    SpeculativeEngine(target).generate(encoded[0], SamplingParams(max_tokens=8))
    results: dict[str, dict] = {}
    references = []
    tot_tok = tot_s = 0.0
    for ids in encoded:
        out, s = hf(target.model, ids, args.tokens, None)
        references.append(out)
        tot_tok += len(out)
        tot_s += s
    results["transformers generate"] = {"tps": tot_tok / tot_s, "mat": 1.0, "same": len(encoded), "ties": 0}
    tot_tok = tot_s = 0.0
    same = ties = 0
    for ids, ref in zip(encoded, references, strict=True):
        out, s = hf(target.model, ids, args.tokens, 10)
        tot_tok += len(out)
        tot_s += s
        same += out == ref
    results["transformers prompt lookup (10)"] = {"tps": tot_tok / tot_s, "mat": float("nan"), "same": same, "ties": 0}
    print("transformers", results, flush=True)
    if args.llama_plain:
        from specguard.drafters.llamacpp import llama_cpp_module, target_gguf

        llama = llama_cpp_module().Llama(model_path=str(target_gguf(target)), n_ctx=4096, n_threads=args.llama_threads,
                                         n_threads_batch=args.llama_threads, verbose=False)
        llama_plain(llama, encoded[0], 8, target.eos_token_ids)  # warm up
        tot_tok = tot_s = 0.0
        same = ties = 0
        for ids, ref in zip(encoded, references, strict=True):
            out, s = llama_plain(llama, ids, args.tokens, target.eos_token_ids)
            tot_tok += len(out)
            tot_s += s
            same += out == ref
        label = f"llama.cpp plain (Q4_1 GGUF, {args.llama_threads} thread{'s' if args.llama_threads > 1 else ''})"
        results[label] = {"tps": tot_tok / tot_s, "mat": float("nan"), "same": same, "ties": float("nan")}
        print(label, results[label], flush=True)
        del llama
    for name in args.drafters.split(","):
        options = {"exit_layer": args.exit_layer, "draft_model": target, "n_threads": args.llama_threads}
        if name == "llamacpp":
            options = {"n_threads": args.llama_threads}
        tot_tok = tot_s = 0.0
        steps = emitted = drafted = accepted = 0
        same = ties = 0
        for ids, ref in zip(encoded, references, strict=True):
            engine = SpeculativeEngine(target, make_drafter(name, target, options))
            t = engine.generate(ids, SamplingParams(max_tokens=args.tokens))
            tot_tok += len(t.output_ids)
            tot_s += t.seconds
            steps += t.metrics()["steps"]
            emitted += len(t.output_ids)
            drafted += t.metrics()["drafted_tokens"]
            accepted += t.metrics()["accepted_tokens"]
            if t.output_ids == ref:
                same += 1
            else:
                i = next((j for j, (a, b) in enumerate(zip(t.output_ids, ref, strict=False)) if a != b), None)
                if i is not None and score(target, ids, ref[: i + 1]).positions[i].margin < NEAR_TIE_EPSILON:
                    ties += 1
        label = f"specguard {name}" + (" (draft = target itself)" if name == "draft-model" else "") + (
            f" (exit layer {args.exit_layer}/30)" if name == "early-exit" else "") + (
            f" (untrusted, Q4_1 GGUF, {args.llama_threads} thread)" if name == "llamacpp" else "")
        results[label] = {"tps": tot_tok / tot_s, "mat": emitted / max(steps, 1), "same": same, "ties": ties,
                          "acc": accepted / drafted if drafted else float("nan")}
        print(label, results[label], flush=True)
    base = results["transformers generate"]["tps"]
    rows = [
        [k, f"{v['tps']:.1f}", f"{v['tps'] / base:.2f}x", "-" if v["mat"] != v["mat"] else f"{v['mat']:.2f}",
         "-" if v.get("acc", float("nan")) != v.get("acc", float("nan")) else f"{v['acc']:.0%}",
         f"{v['same']}/{len(encoded)}", "-" if v["ties"] != v["ties"] else v["ties"]]
        for k, v in results.items()
    ]
    body = (
        f"SmolLM2-135M-Instruct (fp32, dequantized from the Q4_1 GGUF), greedy, {args.tokens} tokens, "
        f"{len(encoded)} Spec-Bench prompts ({args.per_category} per category, first turn).\n\n"
        + table(["method", "tokens/s", "vs transformers", "mean accepted tokens/step", "draft acceptance",
                 "identical to plain", "near-tie flips"], rows)
        + "\n\nMean accepted tokens per step counts the bonus token (as Spec-Bench and vLLM do). "
        "'identical to plain' compares with transformers plain greedy output; a 'near-tie flip' is a "
        f"difference whose first position has a reference top-2 margin below {NEAR_TIE_EPSILON}. Draft "
        "acceptance is accepted / drafted tokens. llama.cpp plain runs the 4-bit GGUF with its own kernels: "
        "its output is a different implementation's and is not expected to be identical.\n"
    )
    title = "Decoding speed (issue: foundation)" if args.section == "speed" else f"Decoding speed ({args.section})"
    write_section(args.section, title, "python bench/speed.py " + " ".join(sys.argv[1:]), body)
    print(body)


if __name__ == "__main__":
    main()
