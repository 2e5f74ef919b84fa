"""Audit re-scoring on Ray Data: prompts/s with 1 and 2 reference actors (section "scaling" of
docs/benchmarks.md).

The provider's answers (greedy, logprobs with top-5) are generated once in-process by the audit
simulator; then the re-scoring stage of `specguard audit run --ray` (`ReferenceScorer`, the
reference loaded once per actor, `map_batches` on an actor pool) re-scores them with 1 and with 2
actors, each actor one CPU and one torch thread, next to the same work in the driver process
(`score_answer`, threads 1 and all). Reported: wall time of the stage including actor start-up,
and the steady rate between the first and the last scored prompt. Every configuration must give
identical scores (checked).

    .venv/bin/python bench/scaling.py --prompts 16 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _report import table, write_section  # noqa: E402


def answers(ref, prompts: list[str], cfg) -> list[dict]:
    """Honest greedy answers from the audit simulator, in-process (no sockets)."""
    from starlette.testclient import TestClient

    from specguard.audit.run import prompt_request
    from specguard.audit.simulate import build_app

    client = TestClient(build_app(ref, None, None, "bench"))
    out = []
    for text in prompts:
        body = {"model": "bench", **prompt_request(cfg, text)}
        reply = client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()
        out.append(reply.json())
    return out


def local_rate(ref, cfg, rows: list[dict], threads: int) -> tuple[float, list[str]]:
    import torch

    from specguard.audit.run import _answer_parts, score_answer
    from specguard.audit.tokens import TokenMap

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmap = TokenMap(ref.tokenizer, ref.vocab_size)
    scored = []
    t0 = time.perf_counter()
    for row in rows:
        content, lpc, _f, _p = _answer_parts(json.loads(row["answer"]), json.loads(row["body"]))
        scored.append(json.dumps(score_answer(cfg, ref, tmap, json.loads(row["prompt_ids"]), content, lpc).to_json()))
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(before)
    return elapsed, scored


def ray_rate(cfg, digest: str, rows: list[dict], actors: int) -> tuple[float, float, list[str]]:
    """(wall seconds incl. actor start-up, steady prompts/s, scores in prompt order)."""
    import ray

    from specguard.audit.ray_run import ReferenceScorer, _config_json

    t0 = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ReferenceScorer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
        fn_constructor_kwargs={"cfg": _config_json(cfg), "digest": digest, "threads": 1})
    stamps, scored = [], {}
    for row in ds.iter_rows():
        stamps.append(time.perf_counter())
        scored[int(row["index"])] = row["scored"]
    wall = stamps[-1] - t0
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    return wall, steady, [scored[i] for i in range(len(rows))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    import ray
    import torch

    from specguard.audit.run import AuditConfig, load_prompts, prompt_request
    from specguard.models import load_model

    ref = load_model(args.reference)
    cfg = AuditConfig(base_url="http://bench.invalid/v1", model="bench", reference=args.reference,
                      budget=args.prompts, max_tokens=args.max_tokens)
    prompts = [f"{p} (variant {i})" for i, p in enumerate(load_prompts(None, args.prompts))]
    got = answers(ref, prompts, cfg)
    rows = [{"index": i, "body": json.dumps(prompt_request(cfg, p)), "prompt_ids": json.dumps(ref.encode_chat([{"role": "user", "content": p}])), "answer": json.dumps(a)}
            for i, (p, a) in enumerate(zip(prompts, got, strict=True))]
    tokens = sum(len(a["choices"][0]["logprobs"]["content"]) for a in got)

    results = []
    all_threads = torch.get_num_threads()
    for threads in sorted({1, all_threads}):
        elapsed, scored = local_rate(ref, cfg, rows, threads)
        results.append((f"driver process, {threads} thread(s)", elapsed, len(rows) / elapsed, scored, threads))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for actors in (1, 2):
            wall, steady, scored = ray_rate(cfg, ref.digest, rows, actors)
            results.append((f"Ray Data, {actors} actor(s) x 1 thread", wall, steady, scored, 1))
    finally:
        ray.shutdown()
    # scores are identical for the same thread count
    by_threads: dict[int, list[str]] = {}
    for name, _w, _r, scored, threads in results:
        if by_threads.setdefault(threads, scored) != scored:
            raise SystemExit(f"{name}: scores differ from another run with {threads} thread(s)")

    load = os.getloadavg()
    head = ["configuration", "stage wall s (incl. start-up)", "prompts/s (steady)"]
    body = table(head, [[n, round(w, 2), round(r, 2)] for n, w, r, _s, _t in results])
    note = (f"{len(rows)} prompts, {tokens} answer tokens re-scored (greedy answers of the audit simulator, "
            f"logprobs with top-5), reference `{args.reference}`. Driver rows: `score_answer` in the calling process "
            "(no start-up). Ray rows: the `--ray` re-scoring stage (`ReferenceScorer` actor pool, reference loaded "
            "once per actor, one CPU and one torch thread per actor); steady = (n - 1) / (last - first scored "
            "prompt), wall includes starting the actors and loading the reference in each. Scores were identical "
            f"across configurations with the same thread count. Load average at the end of the run: "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores (above 2 the absolute "
            "numbers are noisy; rerun on a quiet machine). On a loaded box a process with more torch threads "
            "than free cores slows down sharply (its threads wait on each other), one reason the actors use one "
            "thread each.")
    print(body)
    print(note)
    if not args.no_write:
        write_section("scaling", "Audit re-scoring on Ray Data: 1 vs 2 actors (issue 13)",
                      f"python bench/scaling.py --prompts {args.prompts} --max-tokens {args.max_tokens}",
                      body + "\n\n" + note)


if __name__ == "__main__":
    main()
