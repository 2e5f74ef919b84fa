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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from _report import table, write_section  # noqa: E402
from _spec_bench import by_category

from specguard.engine.factory import make_drafter  # noqa: E402
from specguard.engine.sampling import NEAR_TIE_EPSILON  # noqa: E402
from specguard.engine.scoring import score  # noqa: E402
from specguard.engine.speculative import SpeculativeEngine  # noqa: E402
from specguard.models import load_model  # noqa: E402
from specguard.transcript import SamplingParams  # noqa: E402


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
    by_cat = by_category()
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


def parse_args() -> argparse.Namespace:
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
    return ap.parse_args()


def encode_prompts(target, args: argparse.Namespace) -> list[list[int]]:
    """The chat-encoded Spec-Bench sample the run uses."""
    prompts = sample(args.per_category, [c for c in args.categories.split(",") if c])
    if args.prompts:
        prompts = prompts[: args.prompts]
    return [target.encode_chat([{"role": "user", "content": text[:2000]}]) for _, text in prompts]


class Receipts:
    """Signs and durably logs one receipt per response, as the server does; the issuer (a node key
    and log in a temporary home) is made on first use."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="specguard-bench-speed-"))
        self._issuer = None

    def issuer(self):
        if self._issuer is None:
            from specguard.attest.receipts import ReceiptIssuer
            from specguard.keys import load_or_create_node_key
            from specguard.policies import load_policy

            self._issuer = (ReceiptIssuer(self.home, load_or_create_node_key(self.home)), load_policy("dev"))
        return self._issuer

    def issue(self, target, t, tokens: int) -> float:
        """Sign and log a receipt for transcript `t`; returns the seconds it took."""
        r0 = time.perf_counter()
        rec, policy = self.issuer()
        text = target.decode(t.output_ids)
        request = {"model": target.name, "messages": [{"role": "user", "content": "..."}], "max_tokens": tokens}
        response = {"id": "chatcmpl-bench", "object": "chat.completion", "model": target.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": t.finish_reason}]}
        rec.issue(t, request, response, {}, policy)
        return time.perf_counter() - r0

    def warm_up(self, target, ids: list[int]) -> None:
        rec, policy = self.issuer()
        warm = SpeculativeEngine(target).generate(ids, SamplingParams(max_tokens=4))
        rec.issue(warm, {"model": target.name}, {"id": "warm-up"}, {}, policy)

    def close(self) -> None:
        if self._issuer is not None:
            self._issuer[0].close()
        shutil.rmtree(self.home, ignore_errors=True)


def hf_method(target, tokens: int, lookup: int | None) -> Callable[[list[int]], Run]:
    def run(ids):
        out, s = hf(target.model, ids, tokens, lookup)
        return Run(out, s, len(out) if not lookup else 0)
    return run


def llama_method(target, args: argparse.Namespace, warm_ids: list[int]) -> tuple[str, Callable[[list[int]], Run]]:
    """llama.cpp plain greedy decoding of the target's GGUF: (row name, method), warmed up."""
    from specguard.drafters.llamacpp import llama_cpp_module, target_gguf

    eos = target.eos_token_ids
    llama = llama_cpp_module().Llama(model_path=str(target_gguf(target)), n_ctx=4096, n_threads=args.llama_threads,
                                     n_threads_batch=args.llama_threads, verbose=False)
    llama_plain(llama, warm_ids, 8, eos)  # warm up
    plural = "s" if args.llama_threads > 1 else ""

    def run(ids):
        out, s = llama_plain(llama, ids, args.tokens, eos)
        return Run(out, s)

    return f"llama.cpp plain (Q4_1 GGUF, {args.llama_threads} thread{plural})", run


@dataclass(frozen=True)
class SpecConfig:
    """What a specguard method spec like `llamacpp-ahead-pinned+receipts` runs."""

    base: str  # the drafter name
    options: dict
    flags: list[str]  # what followed "-ahead" ("-default": the machine defaults chose draft-ahead)
    torch_threads: int | None = None
    pinned: bool = False
    receipts: bool = False


def _default_spec() -> SpecConfig:
    """Exactly what serve chooses: its drafter, draft-ahead and thread split."""
    chosen = machine_defaults()
    options = {}
    if chosen.drafter_threads:
        options = {"n_threads": chosen.drafter_threads, "draft_ahead": bool(chosen.draft_ahead)}
    return SpecConfig(chosen.drafter, options, ["-default"] if chosen.draft_ahead else [], chosen.torch_threads)


def spec_config(spec: str, args: argparse.Namespace, target) -> SpecConfig:
    name = spec.split("+", 1)[0]
    base, *flags = name.split("-ahead")
    if base == "default":
        config = _default_spec()
    elif base == "llamacpp":
        config = SpecConfig(base, {"n_threads": args.llama_threads}, flags)
    else:
        config = SpecConfig(base, {"exit_layer": args.exit_layer, "draft_model": target}, flags)
    options, flags = config.options, config.flags
    pinned = bool(flags and "-pinned" in flags[0])
    if config.base == "llamacpp" and "draft_ahead" not in options:
        options["draft_ahead"] = False  # on by default in the drafter: the plain row measures without it
    if flags and flags[0] != "-default":
        options.update(draft_ahead=True, ahead_wait="ready" if "-ready" in flags[0] else "all")
        if pinned:
            options["ahead_cpus"] = [1]
    return SpecConfig(config.base, options, flags, config.torch_threads, pinned,
                      "+receipts" in spec or spec == "default")


@contextmanager
def cpu_setting(torch_threads: int | None, pinned: bool) -> Iterator[None]:
    """Run with `torch_threads` torch threads and, if `pinned`, this thread on CPU 0; restore both after."""
    before = os.sched_getaffinity(0) if pinned else None
    threads_before = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    if pinned:
        os.sched_setaffinity(0, {0})  # the target (this thread; torch on 1 thread) on CPU 0
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        if before is not None:
            os.sched_setaffinity(0, before)


def spec_method(spec: str, args: argparse.Namespace, target, receipts: Receipts) -> Callable[[list[int]], Run]:
    config = spec_config(spec, args, target)

    def run(ids):
        with cpu_setting(config.torch_threads, config.pinned):
            t0 = time.perf_counter()
            drafter = make_drafter(config.base, target, config.options)
            t = SpeculativeEngine(target, drafter).generate(ids, SamplingParams(max_tokens=args.tokens))
            receipt_s = receipts.issue(target, t, args.tokens) if config.receipts else 0.0
            seconds = time.perf_counter() - t0
        m = t.metrics()
        ahead = getattr(drafter, "counters", {}) if config.flags else {}
        return Run(t.output_ids, seconds, m["steps"], m["drafted_tokens"], m["accepted_tokens"], receipt_s,
                   sum(s.draft_seconds for s in t.steps), sum(s.verify_seconds for s in t.steps),
                   int(ahead.get("reused", 0)), int(ahead.get("started", 0)))
    return run


def build_methods(args: argparse.Namespace, target, encoded: list[list[int]],
                  receipts: Receipts) -> dict[str, Callable[[list[int]], Run]]:
    """Every method is a function ids -> Run; the methods run interleaved, prompt by prompt, so a
    load spike on a shared machine hits all of them alike."""
    methods = {"transformers generate": hf_method(target, args.tokens, None)}
    if args.prompt_lookup:
        methods["transformers prompt lookup (10)"] = hf_method(target, args.tokens, 10)
    if args.llama_plain:
        label, run = llama_method(target, args, encoded[0])
        methods[label] = run
    for spec in args.drafters.split(","):
        if spec.startswith("engine-llamacpp"):
            methods[engine_label(spec, args)] = engine_method(spec, args, target, receipts)
        else:
            methods[spec_label(spec, args)] = spec_method(spec, args, target, receipts)
    return methods


def engine_label(spec: str, args: argparse.Namespace) -> str:
    plural = "" if args.llama_threads == 1 else "s"
    receipts = " + receipts" if "+receipts" in spec else ""
    return f"specguard engine llamacpp (serve --engine llamacpp, Q4_1 GGUF, {args.llama_threads} thread{plural}){receipts}"


def engine_method(spec: str, args: argparse.Namespace, target, receipts: Receipts) -> Callable[[list[int]], Run]:
    """specguard's llama.cpp engine on the target's GGUF (what `serve --engine llamacpp` runs per request):
    llama.cpp decoding plus the transcript (per-token logprobs and top-k) and, with +receipts, a receipt."""
    from specguard.drafters.base import NoDrafter
    from specguard.engine.factory import make_engine

    engine = make_engine(target, NoDrafter(), "llamacpp", {"threads": args.llama_threads})
    with_receipts = "+receipts" in spec

    def run(ids):
        t0 = time.perf_counter()
        t = engine.generate(ids, SamplingParams(max_tokens=args.tokens))
        receipt_s = receipts.issue(target, t, args.tokens) if with_receipts else 0.0
        return Run(t.output_ids, time.perf_counter() - t0, len(t.steps), 0, 0, receipt_s)
    run(ids=list(range(1, 9)))  # warm up: the pooled context is created outside the timed region
    return run


def warm_up(args: argparse.Namespace, target, ids: list[int], receipts: Receipts) -> None:
    """Outside the timed region: llama.cpp contexts (pooled per GGUF) and the receipt log."""
    specs = args.drafters.split(",")
    if any(spec.startswith(("llamacpp", "default")) for spec in specs):
        SpeculativeEngine(target, make_drafter("llamacpp", target, {"n_threads": args.llama_threads})).generate(
            ids, SamplingParams(max_tokens=8))
    if any("+receipts" in spec or spec == "default" for spec in specs):
        receipts.warm_up(target, ids)


TOTALS = ("tok", "s", "steps", "drafted", "accepted", "same", "ties", "receipt_s", "draft_s", "verify_s", "reused",
          "started")
SUMMED = ("s", "steps", "drafted", "accepted", "receipt_s", "draft_s", "verify_s", "reused", "started")


def near_tie_flip(target, ids: list[int], out: list[int], ref: list[int]) -> bool:
    """Whether `out` first differs from `ref` where the reference's top-2 margin is below NEAR_TIE_EPSILON."""
    i = next((j for j, (a, b) in enumerate(zip(out, ref, strict=False)) if a != b), None)
    return i is not None and score(target, ids, ref[: i + 1]).positions[i].margin < NEAR_TIE_EPSILON


def add_run(tot: dict, label: str, r: Run, ref: list[int], target, ids: list[int]) -> None:
    tot["tok"] += len(r.out)
    for key in SUMMED:
        tot[key] += getattr(r, key)
    if r.out == ref:
        tot["same"] += 1
    elif label.startswith("specguard") and near_tie_flip(target, ids, r.out, ref):
        tot["ties"] += 1


def progress_line(totals: dict[str, dict], n: int, count: int) -> str:
    return f"prompt {n + 1}/{count}: " + ", ".join(
        f"{k.split(' (')[0]}{' +ahead' if 'ahead' in k else ''}{' +rcpt' if 'receipts' in k else ''} "
        f"{v['tok'] / max(v['s'], 1e-9):.1f}" for k, v in totals.items())


def report_row(k: str, v: dict, base: float, done: int) -> list[str]:
    tps = v["tok"] / v["s"]
    mat = f"{v['tok'] / v['steps']:.2f}" if v["steps"] else "-"
    acc = f"{v['accepted'] / v['drafted']:.0%}" if v["drafted"] else "-"
    ties = v["ties"] if k.startswith("specguard") else "-"
    split = (f"{v['draft_s'] / v['s']:.0%} / {v['verify_s'] / v['s']:.0%}"
             if k.startswith("specguard") and v["verify_s"] else "-")
    reuse = f"{v['reused']}/{v['started']}" if v["started"] else "-"
    rec = f"{1e3 * v['receipt_s'] / done:.1f}" if v["receipt_s"] else "-"
    return [k, f"{tps:.1f}", f"{tps / base:.2f}x", mat, acc, f"{v['same']}/{done}", ties, split, reuse, rec]


def report(args: argparse.Namespace, totals: dict[str, dict], count: int, done: int) -> str:
    """Write the docs/benchmarks.md section for the first `done` of `count` prompts; returns its body."""
    partial = "" if done == count else f"; partial: {done} of {count} prompts done"
    base = totals["transformers generate"]["tok"] / totals["transformers generate"]["s"]
    rows = [report_row(k, v, base, done) for k, v in totals.items()]
    body = (
        f"SmolLM2-135M-Instruct (fp32, dequantized from the Q4_1 GGUF), greedy, {args.tokens} tokens, "
        f"{count} Spec-Bench prompts ({args.per_category} per category"
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


def run_all(args: argparse.Namespace, target, encoded: list[list[int]],
            methods: dict[str, Callable[[list[int]], Run]]) -> str:
    """Run every method on every prompt, writing the report after each prompt; returns the last body."""
    totals = {k: dict.fromkeys(TOTALS, 0) for k in methods}
    body = ""
    for n, ids in enumerate(encoded):
        ref = None
        for label, run in methods.items():
            r = run(ids)
            if ref is None:
                ref = r.out  # transformers plain greedy is the reference
            add_run(totals[label], label, r, ref, target, ids)
        print(progress_line(totals, n, len(encoded)), flush=True)
        body = report(args, totals, len(encoded), n + 1)
    return body


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model()
    encoded = encode_prompts(target, args)
    SpeculativeEngine(target).generate(encoded[0], SamplingParams(max_tokens=8))  # warm up
    receipts = Receipts()
    try:
        methods = build_methods(args, target, encoded, receipts)
        warm_up(args, target, encoded[0], receipts)
        body = run_all(args, target, encoded, methods)
    finally:
        receipts.close()
    print(body)


if __name__ == "__main__":
    main()
