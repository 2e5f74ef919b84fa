"""Remote drafting: what a network drafter costs, and whether PEARL-style draft-ahead overlap helps.

Runs the default model greedily with no drafter, a local early-exit drafter, and the same drafter
behind a real `specguard draft-serve` process (RemoteDrafter over HTTP on 127.0.0.1). Then measures
overlap directly: the wall time of one remote proposal and one target verification forward run
one after the other versus at the same time (what draft-ahead would buy at best).
Writes section "remote-drafter" of docs/benchmarks.md.

    python bench/remote_drafter.py [--max-tokens 48] [--exit-layer 20] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import torch
from _report import table, write_section  # noqa: E402

from specguard.drafters.health import DrafterHealthRegistry, HealthPolicy  # noqa: E402
from specguard.drafters.remote import RemoteDrafter  # noqa: E402
from specguard.engine import kv  # noqa: E402
from specguard.engine.factory import make_drafter  # noqa: E402
from specguard.engine.speculative import SpeculativeEngine  # noqa: E402
from specguard.models import load_model  # noqa: E402
from specguard.testing.processes import ServerHandle, free_port, specguard_cmd, start_process
from specguard.transcript import SamplingParams  # noqa: E402

PROMPT = "List five facts about the planet Mars, one per line."


def start_draft_server(exit_layer: int) -> ServerHandle:
    port = free_port()
    return start_process(specguard_cmd("draft-serve", "--drafter", "early-exit", "--exit-layer", str(exit_layer),
                                       "--port", str(port)), port, health_path="/v1/draft/health", timeout=180)


def run(target, drafter, prompt_ids, params) -> dict:
    print(f"running {drafter.name} ...", file=sys.stderr, flush=True)
    t = SpeculativeEngine(target, drafter).generate(prompt_ids, params)
    m = t.metrics()
    draft = sum(s.draft_seconds for s in t.steps)
    verify = sum(s.verify_seconds for s in t.steps)
    return {"ids": t.output_ids, "m": m, "draft": draft, "verify": verify, "steps": len(t.steps)}


def overlap(target, url: str, prompt_ids: list[int], rounds: int) -> tuple[float, float, float, float]:
    """Median seconds: proposal alone, verify forward alone, both in sequence, both concurrently."""
    drafter = RemoteDrafter(url, health=HealthPolicy(timeout_seconds=30), registry=DrafterHealthRegistry())
    drafter.start(prompt_ids, SamplingParams(max_tokens=64))
    drafter.propose(list(prompt_ids), 4)  # create the session
    print("measuring overlap ...", file=sys.stderr, flush=True)

    def verify() -> None:
        cache = kv.new_cache(target.model)
        with torch.inference_mode():
            kv.forward(target.model, prompt_ids + [1, 2, 3, 4], cache, 5)

    def propose() -> None:
        drafter.propose(list(prompt_ids), 4)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def both_concurrently() -> None:
        th = threading.Thread(target=propose)
        th.start()
        verify()
        th.join()

    alone_d, alone_v, seq, par = [], [], [], []
    for _ in range(rounds):
        alone_d.append(timed(propose))
        alone_v.append(timed(verify))
        seq.append(timed(lambda: (propose(), verify())))
        par.append(timed(both_concurrently))
    drafter.finish()
    med = statistics.median
    return med(alone_d), med(alone_v), med(seq), med(par)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--exit-layer", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    target = load_model()
    prompt_ids = target.encode_chat([{"role": "user", "content": PROMPT}])
    params = SamplingParams(max_tokens=args.max_tokens)
    server = start_draft_server(args.exit_layer)
    url = server.url
    try:
        rows_raw = {}
        rows_raw["none"] = run(target, make_drafter("none", target, {}), prompt_ids, params)
        rows_raw[f"early-exit L={args.exit_layer} (local)"] = run(target, make_drafter("early-exit", target, {"exit_layer": args.exit_layer}), prompt_ids, params)
        remote = RemoteDrafter(url, health=HealthPolicy(timeout_seconds=10), registry=DrafterHealthRegistry())
        rows_raw[f"early-exit L={args.exit_layer} (remote, draft-serve)"] = run(target, remote, prompt_ids, params)
        same = all(r["ids"] == rows_raw["none"]["ids"] for r in rows_raw.values())
        d_alone, v_alone, seq, par = overlap(target, url, prompt_ids, args.rounds)
    finally:
        server.stop(timeout=10)
    rows = []
    for name, r in rows_raw.items():
        m = r["m"]
        rows.append([
            name, f"{m['tokens_per_second']:.1f}", f"{m['acceptance_rate']:.0%}", f"{m['mean_accepted_tokens']:.2f}",
            f"{1000 * r['draft'] / r['steps']:.1f}", f"{1000 * r['verify'] / r['steps']:.1f}",
        ])
    body = (
        f"SmolLM2-135M-Instruct, greedy, {args.max_tokens} tokens, chat prompt \"{PROMPT}\". "
        f"Outputs identical across drafters: **{same}**.\n\n"
        + table(["drafter", "tok/s", "acceptance", "tokens/step", "draft ms/step", "verify ms/step"], rows)
        + "\n\nDraft-ahead overlap (PEARL-style), measured directly: one remote proposal (k=4) and one "
        f"target verification forward, median of {args.rounds} rounds.\n\n"
        + table(
            ["proposal alone (ms)", "verify alone (ms)", "in sequence (ms)", "concurrently (ms)", "overlap saving"],
            [[f"{1000 * d_alone:.1f}", f"{1000 * v_alone:.1f}", f"{1000 * seq:.1f}", f"{1000 * par:.1f}", f"{1 - par / seq:.0%}"]],
        )
        + "\n\nThe drafting server here shares the verifier's CPU cores, so drafting ahead competes with "
        "verification for the same compute; the saving column is what draft-ahead could buy at most per step "
        "on this machine (before mis-speculated drafts are thrown away). See docs/drafters.md."
    )
    print(body)
    write_section("remote-drafter", "Remote drafter: network cost and draft-ahead overlap", "python bench/remote_drafter.py", body)


if __name__ == "__main__":
    main()
