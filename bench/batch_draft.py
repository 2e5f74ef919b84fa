"""Batching and drafting together, in-process: what 1 and N concurrent requests cost in CPU seconds.

Runs N requests (greedy, `--tokens` tokens each, the bench/server.py prompts as chat) through one
`BatchScheduler` (the server's continuous batching: `max_batch` 8, row cap 8), with each drafter in
`--drafters` (`default`: the `llamacpp` drafter with the options `specguard serve` gives it, draft-ahead
on with 2+ CPUs; or any registered drafter name), and reports per configuration:

- CPU seconds of the whole process (`time.process_time`: every thread, torch and llama.cpp), which
  other jobs on a shared box move much less than wall time, and tokens per CPU second;
- llama.cpp work, counted at the C API (`llama_model_load_from_file`, `llama_init_from_model`,
  `llama_decode` and the tokens each decode carried), so the numbers mean the same for any version of
  the drafter code; target forwards (`BatchScheduler.stats`) and draft-ahead threads started.

A warm-up request runs first (the first request of a process loads the drafter's model once);
`--cold` measures without it. Wall time is printed but not a result on a shared machine. Writes
section `batch-draft` of docs/benchmarks.md unless --no-doc.

    python bench/batch_draft.py --clients 1,4 --tokens 32 [--drafters none,default] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from typing import Any

import torch
from _report import table, write_section

from specguard.engine.batching import DEFAULT_MAX_ROWS, BatchRequest, BatchScheduler
from specguard.engine.factory import make_drafter
from specguard.models import load_model
from specguard.transcript import SamplingParams

PROMPTS = [
    "List five facts about the planet Mars, one per line.",
    "Write a short poem about the sea.",
    "Explain what a hash function is in two sentences.",
    "Give three tips for writing clear code.",
]

#: llama.cpp C-API calls counted (module attribute names in llama_cpp.llama_cpp)
COUNTED = ("llama_model_load_from_file", "llama_init_from_model", "llama_decode")
LLAMA = Counter()


def count_llama_calls() -> bool:
    """Wrap the llama.cpp C functions both the old and the new drafter code call through `llama_cpp.llama_cpp`."""
    try:
        import llama_cpp.llama_cpp as low
    except ImportError:
        return False
    for name in COUNTED:
        original = getattr(low, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            LLAMA[_name] += 1
            if _name == "llama_decode":
                LLAMA["decoded_tokens"] += int(args[1].n_tokens)
            t0 = time.thread_time()  # the call runs in this thread: its CPU time
            try:
                return _original(*args)
            finally:
                LLAMA[_name + "_cpu"] += time.thread_time() - t0

        setattr(low, name, counted)
    return True


class Sink:
    def __init__(self) -> None:
        self.kind: str | None = None
        self.value: Any = None

    def __call__(self, kind: str, value: Any) -> None:
        if kind != "event":
            self.kind, self.value = kind, value


def run(target: Any, drafter: str, clients: int, tokens: int, options: dict[str, Any]) -> dict[str, Any]:
    """`clients` requests at once through one scheduler; CPU seconds and counts."""
    scheduler = BatchScheduler(target, max_batch=8, max_rows=DEFAULT_MAX_ROWS)
    made: list[Any] = []

    def factory() -> Any:
        made.append(make_drafter(drafter, target, dict(options)))
        return made[-1]

    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    sinks = [Sink() for _ in range(clients)]
    for i, sink in enumerate(sinks):
        prompt = target.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
        scheduler.submit(BatchRequest(prompt, params, factory, sink, top_logprobs=0))
    before, cpu0, wall0 = Counter(LLAMA), time.process_time(), time.perf_counter()
    scheduler.run_until_idle()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    scheduler.stop()
    assert all(s.kind == "done" for s in sinks), [s.value for s in sinks if s.kind != "done"]
    out = sum(len(s.value.output_ids) for s in sinks)
    llama = {k: LLAMA[k] - before[k] for k in (*COUNTED, *(c + "_cpu" for c in COUNTED), "decoded_tokens")}
    threads = sum(int(getattr(d, "counters", {}).get("started", 0)) for d in made if hasattr(d, "inner"))
    return {"drafter": drafter, "clients": clients, "tokens": out, "cpu": cpu, "wall": wall,
            "forwards": scheduler.stats["batched_forwards"] + (1 if scheduler.stats["prefills"] else 0),
            "threads": threads, "ahead": f"{scheduler.stats.get('ahead_used', 0)}/{scheduler.stats.get('ahead_offered', 0)}",
            **llama}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--drafters", default="none,default")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the default split on 2 CPUs)")
    parser.add_argument("--cold", action="store_true", help="no warm-up request (count the first model load)")
    parser.add_argument("--section", default="batch-draft")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counting = count_llama_calls()
    target = load_model()
    rows = []
    for spec in args.drafters.split(","):
        name = "llamacpp" if spec == "default" else spec
        if not args.cold:
            run(target, name, 1, 8, {})
        for clients in (int(c) for c in args.clients.split(",")):
            r = run(target, name, clients, args.tokens, {})
            r["drafter"] = spec
            print(r, flush=True)
            rows.append(r)
    base = {r["drafter"]: r["tokens"] / r["cpu"] for r in rows if r["clients"] == 1}
    load = os.getloadavg()
    body = table(
        ["drafter", "clients", "tokens", "CPU s", "tok / CPU s", "vs 1 client", "wall s", "wall tok/s", "target forwards",
         "llama.cpp model loads", "contexts created", "load + context CPU s", "decodes", "tokens decoded",
         "decode CPU s", "per-request draft-ahead threads", "batch blocks used / offered"],
        [[r["drafter"], r["clients"], r["tokens"], r["cpu"], r["tokens"] / r["cpu"],
          f"{r['tokens'] / r['cpu'] / base[r['drafter']]:.2f}x" if r["drafter"] in base else "",
          r["wall"], r["tokens"] / r["wall"], r["forwards"], r["llama_model_load_from_file"], r["llama_init_from_model"],
          r["llama_model_load_from_file_cpu"] + r["llama_init_from_model_cpu"],
          r["llama_decode"], r["decoded_tokens"], r["llama_decode_cpu"], r["threads"], r["ahead"]] for r in rows])
    body += (f"\n\nLoad average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores "
             f"(CPU seconds are the process's own; wall time is indicative only under load). "
             f"llama.cpp calls counted: {counting}.")
    print(body)
    if not args.no_doc:
        command = (f"python bench/batch_draft.py --clients {args.clients} --tokens {args.tokens} "
                   f"--drafters {args.drafters} --threads {args.threads}" + (" --cold" if args.cold else ""))
        write_section(args.section, "Batching and drafting together, in-process CPU seconds (issue 23)",
                      command, body)


if __name__ == "__main__":
    main()
