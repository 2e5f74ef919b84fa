"""Decoding speed on a fixed Spec-Bench sample: transformers, llama.cpp and specguard's drafters.

Greedy, N tokens per prompt, every Spec-Bench category (or `--categories`). Methods, side by side
in one run: transformers plain `generate`, transformers prompt lookup (`prompt_lookup_num_tokens`),
llama.cpp plain greedy decoding of the same GGUF (needs llama-cpp-python), and specguard with each
`--drafters` spec: a drafter name (`llamacpp` is the untrusted llama.cpp drafter), `-ahead` for
draft-ahead (`-ahead-ready`, `-ahead-pinned`), `+receipts` to sign and log a receipt per response
as the server does, or `default`: what `make serve` / `specguard serve` run out of the box
(specguard.defaults.choose_defaults: drafter, draft-ahead and the torch/drafter thread split chosen for
this machine, receipts on). Every method's output is compared with transformers plain decoding (near-tie
flips are counted). Writes the `--section` ("speed-issue12") section of docs/benchmarks.md.

    python bench/speed.py [--per-category 2] [--max-tokens 128] [--threads 1]
    python bench/speed.py --drafters none,default --prompts 2 --tokens 32 --section speed-defaults   # quick check
    python bench/speed.py --drafters none,ngram,early-exit,draft-model --no-llama-plain --section speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _report import table, write_section  # noqa: E402

from specguard.engine.factory import make_drafter  # noqa: E402
from specguard.engine.sampling import NEAR_TIE_EPSILON  # noqa: E402
from specguard.engine.scoring import score  # noqa: E402
from specguard.engine.speculative import SpeculativeEngine  # noqa: E402
from specguard.models import load_model  # noqa: E402
from specguard.transcript import SamplingParams  # noqa: E402

#: Spec-Bench's questions: SPECGUARD_SPEC_BENCH, else shared/data/spec_bench next to the checkout or in /work
_SPEC_BENCH = Path("data") / "spec_bench" / "question.jsonl"
_ROOTS = (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared"))
QUESTIONS = Path(os.environ.get("SPECGUARD_SPEC_BENCH")
                 or next((r / _SPEC_BENCH for r in _ROOTS if (r / _SPEC_BENCH).is_file()), _ROOTS[0] / _SPEC_BENCH))


@dataclass
class Run:
    """One method on one prompt."""

    out: list[int]
    s: float
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    receipt_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    reused: int = 0
    started: int = 0


def sample(per_category: int, categories: list[str] | None = None) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    by_cat: dict[str, list[str]] = {}
    for row in rows:
        by_cat.setdefault(row["category"], []).append(row["turns"][0])
    unknown = sorted(set(categories or ()) - set(by_cat))
    if unknown:
        raise SystemExit(f"unknown Spec-Bench categories {unknown}; known: {sorted(by_cat)}")
    chosen = [c for c in sorted(by_cat) if not categories or c in categories]
    return [(cat, by_cat[cat][i]) for cat in chosen for i in range(per_category)]


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


def spec_label(spec: str, args: argparse.Namespace) -> str:
    """A readable row name for a specguard method spec like `llamacpp-ahead+receipts`."""
    if spec == "default":
        d = machine_defaults()
        threads = f"torch {d.torch_threads}" + (f" + drafter {d.drafter_threads}" if d.drafter_threads else "")
        ahead = " + draft-ahead" if d.draft_ahead else ""
        return f"specguard default = make serve ({d.drafter}{ahead}, {threads} threads) + receipts"
    name, receipts = (spec.split("+", 1)[0], "+receipts" in spec)
    base, *flags = name.split("-ahead")
    label = f"specguard {base}"
    if base == "draft-model":
        label += " (draft = target itself)"
    elif base == "early-exit":
        label += f" (exit layer {args.exit_layer}/30)"
    elif base == "llamacpp":
        label += f" (untrusted, Q4_1 GGUF, {args.llama_threads} thread)"
    if flags:
        mode = "ready" if "-ready" in flags[0] else "all"
        label += f" + draft-ahead ({mode}{', pinned' if '-pinned' in flags[0] else ''})"
    if receipts:
        label += " + receipts"
    return label


def machine_defaults():
    """What `specguard serve` chooses on this machine with no drafter or thread options."""
    from specguard.defaults import available_cpus, choose_defaults, llamacpp_drafter_available

    return choose_defaults(available_cpus(), llamacpp_drafter_available(None))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-tokens", "--tokens", dest="tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=0, help="use only the first N prompts of the sample (0: all)")
    ap.add_argument("--categories", default="", help="comma-separated Spec-Bench categories (default: all)")
    ap.add_argument("--drafters", default="none,ngram,llamacpp,llamacpp-ahead,llamacpp-ahead-ready,llamacpp-ahead-pinned,llamacpp-ahead+receipts",
                    help="specguard rows: a drafter name, '-ahead' (draft-ahead, wait all), '-ahead-ready', "
                         "'-ahead-pinned' (drafter thread on CPU 1, target on CPU 0), '+receipts' (sign and log "
                         "a receipt per response, as the server does)")
    ap.add_argument("--exit-layer", type=int, default=20)
    ap.add_argument("--no-llama-plain", dest="llama_plain", action="store_false",
                    help="skip llama.cpp plain greedy decoding")
    ap.add_argument("--llama-plain", dest="llama_plain", action="store_true", default=True,
                    help="time llama.cpp plain greedy decoding (the default; kept for older commands)")
    ap.add_argument("--no-prompt-lookup", dest="prompt_lookup", action="store_false")
    ap.add_argument("--llama-threads", type=int, default=1, help="llama.cpp threads (plain and drafter)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--section", default="speed-issue12", help="docs/benchmarks.md section to write")
    ap.add_argument("--title", default="", help="the section's title")
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model()
    prompts = sample(args.per_category, [c for c in args.categories.split(",") if c])
    if args.prompts:
        prompts = prompts[: args.prompts]
    encoded = [target.encode_chat([{"role": "user", "content": text[:2000]}]) for _, text in prompts]
    eos = target.eos_token_ids
    # warm up
    SpeculativeEngine(target).generate(encoded[0], SamplingParams(max_tokens=8))

    # every method is a function ids -> Run; the methods run interleaved, prompt by prompt, so a
    # load spike on a shared machine hits all of them alike
    methods: dict[str, Callable[[list[int]], Run]] = {}

    def hf_method(lookup: int | None) -> Callable[[list[int]], Run]:
        def run(ids):
            out, s = hf(target.model, ids, args.tokens, lookup)
            return Run(out, s, len(out) if not lookup else 0)
        return run

    methods["transformers generate"] = hf_method(None)
    if args.prompt_lookup:
        methods["transformers prompt lookup (10)"] = hf_method(10)
    if args.llama_plain:
        from specguard.drafters.llamacpp import llama_cpp_module, target_gguf

        llama = llama_cpp_module().Llama(model_path=str(target_gguf(target)), n_ctx=4096, n_threads=args.llama_threads,
                                         n_threads_batch=args.llama_threads, verbose=False)
        llama_plain(llama, encoded[0], 8, eos)  # warm up
        plural = "s" if args.llama_threads > 1 else ""

        def run_llama(ids):
            out, s = llama_plain(llama, ids, args.tokens, eos)
            return Run(out, s)

        methods[f"llama.cpp plain (Q4_1 GGUF, {args.llama_threads} thread{plural})"] = run_llama

    home = Path(tempfile.mkdtemp(prefix="specguard-bench-speed-"))
    issuer = None

    def receipt_issuer():
        nonlocal issuer
        if issuer is None:
            from specguard.attest.receipts import ReceiptIssuer
            from specguard.keys import load_or_create_node_key
            from specguard.policies import load_policy

            issuer = (ReceiptIssuer(home, load_or_create_node_key(home)), load_policy("dev"))
        return issuer

    def spec_method(spec: str) -> Callable[[list[int]], Run]:
        name = spec.split("+", 1)[0]
        base, *flags = name.split("-ahead")
        options: dict = {"exit_layer": args.exit_layer, "draft_model": target}
        torch_threads = None
        if base == "default":  # exactly what serve chooses: its drafter, draft-ahead and thread split
            chosen = machine_defaults()
            base, torch_threads, options = chosen.drafter, chosen.torch_threads, {}
            if chosen.drafter_threads:
                options = {"n_threads": chosen.drafter_threads, "draft_ahead": bool(chosen.draft_ahead)}
            flags = ["-default"] if chosen.draft_ahead else []
        elif base == "llamacpp":
            options = {"n_threads": args.llama_threads}
        pinned = bool(flags and "-pinned" in flags[0])
        if base == "llamacpp" and "draft_ahead" not in options:
            options["draft_ahead"] = False  # on by default in the drafter: the plain row measures without it
        if flags and flags[0] != "-default":
            options.update(draft_ahead=True, ahead_wait="ready" if "-ready" in flags[0] else "all")
            if pinned:
                options["ahead_cpus"] = [1]
        receipts = "+receipts" in spec or spec == "default"

        def run(ids):
            before = os.sched_getaffinity(0) if pinned else None
            threads_before = torch.get_num_threads()
            if torch_threads is not None:
                torch.set_num_threads(torch_threads)
            if pinned:
                os.sched_setaffinity(0, {0})  # the target (this thread; torch on 1 thread) on CPU 0
            try:
                t0 = time.perf_counter()
                drafter = make_drafter(base, target, options)
                engine = SpeculativeEngine(target, drafter)
                t = engine.generate(ids, SamplingParams(max_tokens=args.tokens))
                receipt_s = 0.0
                if receipts:
                    r0 = time.perf_counter()
                    rec, policy = receipt_issuer()
                    text = target.decode(t.output_ids)
                    request = {"model": target.name, "messages": [{"role": "user", "content": "..."}],
                               "max_tokens": args.tokens}
                    response = {"id": "chatcmpl-bench", "object": "chat.completion", "model": target.name,
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                             "finish_reason": t.finish_reason}]}
                    rec.issue(t, request, response, {}, policy)
                    receipt_s = time.perf_counter() - r0
                seconds = time.perf_counter() - t0
            finally:
                torch.set_num_threads(threads_before)
                if before is not None:
                    os.sched_setaffinity(0, before)
            m = t.metrics()
            ahead = getattr(drafter, "counters", {}) if flags else {}
            return Run(t.output_ids, seconds, m["steps"], m["drafted_tokens"], m["accepted_tokens"], receipt_s,
                       sum(s.draft_seconds for s in t.steps), sum(s.verify_seconds for s in t.steps),
                       int(ahead.get("reused", 0)), int(ahead.get("started", 0)))
        return run

    for spec in args.drafters.split(","):
        methods[spec_label(spec, args)] = spec_method(spec)
    # warm up outside the timed region: llama.cpp contexts (pooled per GGUF) and the receipt log
    if any(spec.startswith(("llamacpp", "default")) for spec in args.drafters.split(",")):
        SpeculativeEngine(target, make_drafter("llamacpp", target, {"n_threads": args.llama_threads})).generate(
            encoded[0], SamplingParams(max_tokens=8))
    if any("+receipts" in spec or spec == "default" for spec in args.drafters.split(",")):
        rec, policy = receipt_issuer()
        warm = SpeculativeEngine(target).generate(encoded[0], SamplingParams(max_tokens=4))
        rec.issue(warm, {"model": target.name}, {"id": "warm-up"}, {}, policy)

    def report(done: int) -> str:
        partial = "" if done == len(encoded) else f"; partial: {done} of {len(encoded)} prompts done"
        base = totals["transformers generate"]["tok"] / totals["transformers generate"]["s"]
        rows = []
        for k, v in totals.items():
            tps = v["tok"] / v["s"]
            mat = f"{v['tok'] / v['steps']:.2f}" if v["steps"] else "-"
            acc = f"{v['accepted'] / v['drafted']:.0%}" if v["drafted"] else "-"
            ties = v["ties"] if k.startswith("specguard") else "-"
            split = (f"{v['draft_s'] / v['s']:.0%} / {v['verify_s'] / v['s']:.0%}" if k.startswith("specguard")
                     else "-")
            reuse = f"{v['reused']}/{v['started']}" if v["started"] else "-"
            rec = f"{1e3 * v['receipt_s'] / done:.1f}" if v["receipt_s"] else "-"
            rows.append([k, f"{tps:.1f}", f"{tps / base:.2f}x", mat, acc, f"{v['same']}/{done}", ties, split, reuse,
                         rec])
        body = (
            f"SmolLM2-135M-Instruct (fp32, dequantized from the Q4_1 GGUF), greedy, {args.tokens} tokens, "
            f"{len(encoded)} Spec-Bench prompts ({args.per_category} per category"
            + (f" of {args.categories}" if args.categories else "")
            + f", first turn{partial}); methods interleaved prompt by prompt; torch threads {torch.get_num_threads()}; "
            f"llama.cpp threads {args.llama_threads}.\n\n"
            + table(["method", "tokens/s", "vs transformers", "tokens/step", "draft acceptance",
                     "identical to plain", "near-tie flips", "draft / verify time", "ahead blocks used",
                     "receipt ms/response"], rows)
            + "\n\nTokens per step counts the bonus token (as Spec-Bench and vLLM do). "
            "'identical to plain' compares with transformers plain greedy output; a 'near-tie flip' is a "
            f"difference whose first position has a reference top-2 margin below {NEAR_TIE_EPSILON}. Draft "
            "acceptance is accepted / drafted tokens. 'draft / verify time' is the share of the method's wall time "
            "the engine's thread spent getting proposals (with draft-ahead: waiting for the background block or "
            "drafting synchronously) and verifying. 'ahead blocks used' counts background blocks reused / started. "
            "Receipt rows include signing and durably logging one receipt per response (Ed25519 DSSE + SQLite "
            "transparency log with fsync, specguard.attest.receipts.ReceiptIssuer), inside the timed region. "
            "llama.cpp plain runs the 4-bit GGUF with its own kernels: its output is a different implementation's "
            "and is not expected to be identical.\n"
            + (f"\n{args.note}\n" if args.note else "")
        )
        title = args.title or ("Decoding speed (issue: foundation)" if args.section == "speed"
                               else f"Decoding speed ({args.section})")
        write_section(args.section, title, "python bench/speed.py " + " ".join(sys.argv[1:]), body)
        return body

    keys = ("tok", "s", "steps", "drafted", "accepted", "same", "ties", "receipt_s", "draft_s", "verify_s", "reused",
            "started")
    totals = {k: dict.fromkeys(keys, 0) for k in methods}
    for n, ids in enumerate(encoded):
        ref = None
        for label, run in methods.items():
            r = run(ids)
            if ref is None:
                ref = r.out  # transformers plain greedy is the reference
            tot = totals[label]
            tot["tok"] += len(r.out)
            for key in ("s", "steps", "drafted", "accepted", "receipt_s", "draft_s", "verify_s", "reused", "started"):
                tot[key] += getattr(r, key)
            if r.out == ref:
                tot["same"] += 1
            elif label.startswith("specguard"):
                i = next((j for j, (a, b) in enumerate(zip(r.out, ref, strict=False)) if a != b), None)
                if i is not None and score(target, ids, ref[: i + 1]).positions[i].margin < NEAR_TIE_EPSILON:
                    tot["ties"] += 1
        print(f"prompt {n + 1}/{len(encoded)}: " + ", ".join(
            f"{k.split(' (')[0]}{' +ahead' if 'ahead' in k else ''}{' +rcpt' if 'receipts' in k else ''} "
            f"{v['tok'] / max(v['s'], 1e-9):.1f}" for k, v in totals.items()), flush=True)

        body = report(n + 1)
    if issuer is not None:
        issuer[0].close()
    shutil.rmtree(home, ignore_errors=True)
    print(body)


if __name__ == "__main__":
    main()
