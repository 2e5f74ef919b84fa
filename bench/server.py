"""Server throughput under concurrent clients (continuous batching) and the receipts' share of latency.

For each drafter (none, local n-gram; optionally remote = a real `specguard draft-serve` running the
early-exit drafter), starts `specguard serve` on the default model at 127.0.0.1, then
1. sends sequential 64-token chat requests and reads, from the server's own metrics, the time it
   spent on evidence + receipt signing + log append + response storage per response, as a
   fraction of the client-measured response latency (issue 11: < 3 %);
2. for each client count (1, 2, 4, 8, 16) runs `rounds` requests per client (each client sends its
   next request when the previous one is answered; httpx async) and reports the aggregate generated
   tokens/s, requests/s, p50/p95 request latency and the receipt share under load.
Requests ask for exactly `--max-tokens` tokens (`ignore_eos`), greedy, so every row generates the
same work. Issue 13's goal: at 8 clients >= 4x the tokens/s of 1 client, with p50 <= 2x the
1-client p50. Writes section "server" of docs/benchmarks.md (unless --no-doc).

    python bench/server.py [--clients 1,2,4,8,16] [--rounds 2] [--max-tokens 64] [--drafters none,ngram]
                           [--max-concurrency 8] [--no-batching] [--sequential 4]
    python bench/server.py --drafters none,default --clients 1,8 --rounds 1 --tokens 32 --sequential 2 \
        --section server-defaults --title "HTTP server: the default configuration under concurrent clients"

`default` in `--drafters` starts the server with no `--drafter` (and no `--threads` unless given): what
`make serve` runs, with the drafter and thread split `specguard serve` chooses and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _report import table, write_section  # noqa: E402

from specguard.testing.processes import free_port, specguard_cmd, start_process

PROMPTS = [
    "List five facts about the planet Mars, one per line.",
    "Write a short poem about the sea.",
    "Explain what a hash function is in two sentences.",
    "Give three tips for writing clear code.",
]


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _receipt_seconds(text: str) -> tuple[float, float]:
    return (_metric(text, "specguard:receipt_seconds_sum"), _metric(text, "specguard:receipt_seconds_count"))


def _chat(i: int, max_tokens: int) -> dict:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc; 0 where unavailable).

    Tokens per server CPU-second is comparable across loaded and quiet machines (with
    `--threads 1`, where no intra-op thread spins waiting for another), wall-clock rates are not."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def sequential(url: str, n: int, max_tokens: int) -> dict:
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/v1/chat/completions", json=_chat(0, 4))  # warm-up
        s0, c0 = _receipt_seconds(http.get("/metrics").text)
        latencies = []
        for i in range(n):
            t0 = time.perf_counter()
            resp = http.post("/v1/chat/completions", json=_chat(i, max_tokens))
            latencies.append(time.perf_counter() - t0)
            resp.raise_for_status()
        s1, c1 = _receipt_seconds(http.get("/metrics").text)
    per_receipt = (s1 - s0) / max(c1 - c0, 1)
    latency = statistics.mean(latencies)
    return {"latency": latency, "receipt": per_receipt, "fraction": per_receipt / latency}


async def concurrent(url: str, clients: int, rounds: int, max_tokens: int, pid: int | None = None) -> dict:
    """`clients` clients, each sending `rounds` requests back to back."""
    tokens = 0
    errors = 0
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, c: int) -> None:
        nonlocal tokens, errors
        for r in range(rounds):
            t0 = time.perf_counter()
            resp = await http.post("/v1/chat/completions", json=_chat(c + r, max_tokens))
            latencies.append(time.perf_counter() - t0)
            if resp.status_code == 200:
                tokens += resp.json()["usage"]["completion_tokens"]
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:
        s0, c0 = _receipt_seconds((await http.get("/metrics")).text)
        cpu0 = _cpu_seconds(pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, c) for c in range(clients)))
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds(pid) - cpu0
        s1, c1 = _receipt_seconds((await http.get("/metrics")).text)
    receipt = (s1 - s0) / max(c1 - c0, 1)
    p50 = statistics.median(latencies)
    return {"clients": clients, "requests": clients * rounds, "rps": clients * rounds / wall, "tps": tokens / wall,
            "p50": p50, "p95": _pct(latencies, 0.95), "receipt_share": receipt / p50, "errors": errors,
            "wall": wall, "tokens_per_cpu_s": tokens / cpu if cpu > 0 else 0.0}


def run(drafter: str, args: argparse.Namespace, home: Path) -> dict | str:
    extra: list[str] = ([] if drafter == "default" else ["--drafter", drafter]) + [
                        "--max-concurrency", str(args.max_concurrency),
                        "--max-queue", str(max(args.clients_list) + 8)]
    if args.no_batching:
        extra.append("--no-batching")
    if args.max_batch_rows is not None:
        extra += ["--max-batch-rows", str(args.max_batch_rows)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    draft = None
    if drafter == "remote":
        dport = free_port()
        try:
            draft = start_process(specguard_cmd("draft-serve", "--port", str(dport)), dport,
                                  health_path="/v1/draft/health", timeout=300)
        except RuntimeError as exc:
            return f"`specguard draft-serve` not available: {str(exc).splitlines()[0][:120]}"
        extra += ["--drafter-url", f"http://127.0.0.1:{dport}"]
    port = free_port()
    srv = start_process(specguard_cmd("serve", "--port", str(port), "--log-level", "warning", *extra),
                        port, env={"SPECGUARD_HOME": str(home / drafter)}, timeout=300)
    try:
        seq = sequential(srv.url, args.sequential, args.max_tokens) if args.sequential else None
        loads = []
        for clients in args.clients_list:
            result = asyncio.run(concurrent(srv.url, clients, args.rounds, args.max_tokens, srv.pid))
            print(f"{drafter} clients={clients}: {result}", flush=True)
            loads.append(result)
    except Exception:
        print(f"server output (alive: {srv.alive()}):\n{srv.output()[-4000:]}", file=sys.stderr, flush=True)
        raise
    finally:
        srv.stop()
        if draft is not None:
            draft.stop()
    chosen = [line.split("defaults", 1)[1].strip() for line in srv.output().splitlines()
              if line.strip().startswith("defaults ")]
    return {"sequential": seq, "loads": loads, "chosen": chosen[0] if chosen else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,2,4,8,16", help="client counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each client count")
    parser.add_argument("--sequential", type=int, default=4, help="requests in the receipt-share phase (0: skip)")
    parser.add_argument("--max-tokens", "--tokens", dest="max_tokens", type=int, default=64)
    parser.add_argument("--drafters", default="none,ngram",
                        help="drafters, comma-separated; 'default' = what `make serve` chooses (no --drafter)")
    parser.add_argument("--max-concurrency", type=int, default=8, help="the server's batch size (running requests)")
    parser.add_argument("--no-batching", action="store_true", help="serve with --no-batching (one thread per request)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    parser.add_argument("--max-batch-rows", type=int, default=None, help="the server's --max-batch-rows")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not write docs/benchmarks.md")
    parser.add_argument("--section", default="server", help="docs/benchmarks.md section to write")
    parser.add_argument("--title", default="HTTP server: throughput under concurrent clients, receipt overhead")
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    args = parser.parse_args()
    args.clients_list = [int(c) for c in args.clients.split(",")]
    load_rows, seq_rows, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="specguard-bench-") as tmp:
        for drafter in args.drafters.split(","):
            result = run(drafter, args, Path(tmp))
            if isinstance(result, str):
                notes.append(f"- {drafter}: {result}")
                continue
            if result["chosen"]:
                notes.append(f"- {drafter}: the server chose `{result['chosen']}`")
            seq = result["sequential"]
            if seq is not None:
                seq_rows.append([drafter, f"{seq['latency'] * 1000:.0f}", f"{seq['receipt'] * 1000:.2f}",
                                 f"{seq['fraction'] * 100:.2f} %"])
            base = result["loads"][0]
            for load in result["loads"]:
                load_rows.append([
                    drafter, load["clients"], load["requests"], f"{load['tps']:.1f}", f"{load['rps']:.2f}",
                    f"{load['p50'] * 1000:.0f}", f"{load['p95'] * 1000:.0f}",
                    f"{load['tps'] / base['tps']:.2f}x", f"{load['p50'] / base['p50']:.2f}x",
                    f"{load['receipt_share'] * 100:.2f} %", f"{load['tokens_per_cpu_s']:.1f}",
                    f"{load['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x" if base["tokens_per_cpu_s"] else "-",
                    load["errors"]])
    mode = "`--no-batching` (one thread per request)" if args.no_batching else "continuous batching"
    body = table(["drafter", "clients", "requests", "tok/s (aggregate)", "req/s", "p50 latency ms",
                  "p95 latency ms", "tok/s vs 1 client", "p50 vs 1 client", "receipt share of p50",
                  "tok per server CPU-s", "vs 1 client", "errors"],
                 load_rows)
    body += (
        f"\n\nDefault model (SmolLM2-135M), greedy chat requests of exactly {args.max_tokens} tokens "
        f"(`ignore_eos`), {mode}, `--max-concurrency {args.max_concurrency}`; each client sends "
        f"{args.rounds} requests back to back. Latency is the client's, from sending to the full answer "
        "(receipt included). \"receipt share\" is the server's own `specguard:receipt_seconds` (evidence "
        "plugins + Ed25519 signing + durable SQLite log append + response storage) per response divided by "
        "the p50 latency; receipts are issued in worker threads, outside the batch loop. \"tok per server "
        "CPU-s\" divides the generated tokens by the server process's user+system CPU seconds in that phase "
        "(/proc): unlike wall-clock rates it barely moves when other processes load the machine (meaningful "
        "with `--threads 1`).\n"
    )
    if seq_rows:
        body += "\nSequential requests (receipt overhead, issue 11):\n\n" + table(
            ["drafter", "latency ms", "receipt ms/response", "receipt share of latency"], seq_rows) + "\n"
    if notes:
        body += "\n" + "\n".join(notes) + "\n"
    if args.note:
        body += f"\n{args.note}\n"
    print(body)
    if not args.no_doc:
        write_section(args.section, args.title, "python bench/server.py " + " ".join(sys.argv[1:]), body)


if __name__ == "__main__":
    main()
