"""Server overhead and throughput: receipts as a share of latency; requests/s under 8 clients.

For each drafter (none, local n-gram, remote = a real `specguard draft-serve` process running the
early-exit drafter), starts `specguard serve` on the default model at 127.0.0.1, then
1. sends sequential 64-token chat requests and reads, from the server's own metrics, the time it
   spent on evidence + receipt signing + log append + response storage per response, as a
   fraction of the client-measured response latency (target < 3 %);
2. drives 8 concurrent clients (httpx async) for a fixed number of requests and reports requests/s
   and generated tokens/s.
Writes section "server" of docs/benchmarks.md.

    python bench/server.py [--requests 16] [--sequential 6] [--max-tokens 64] [--drafters none,ngram,remote]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from _report import table, write_section  # noqa: E402
from support.servers import free_port, specguard_cmd, start_process  # noqa: E402

PROMPTS = [
    "List five facts about the planet Mars, one per line.",
    "Write a short poem about the sea.",
    "Explain what a hash function is in two sentences.",
    "Give three tips for writing clear code.",
]


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _chat(i: int, max_tokens: int) -> dict:
    # ignore EOS by asking for max_tokens and measuring per generated token where it matters
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0}


def sequential(url: str, n: int, max_tokens: int) -> dict:
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/v1/chat/completions", json=_chat(0, 4))  # warm-up
        before = http.get("/metrics").text
        latencies, tokens = [], []
        for i in range(n):
            t0 = time.perf_counter()
            body = http.post("/v1/chat/completions", json=_chat(i, max_tokens)).json()
            latencies.append(time.perf_counter() - t0)
            tokens.append(body["usage"]["completion_tokens"])
        after = http.get("/metrics").text
    receipt_sum = _metric(after, "specguard:receipt_seconds_sum") - _metric(before, "specguard:receipt_seconds_sum")
    count = _metric(after, "specguard:receipt_seconds_count") - _metric(before, "specguard:receipt_seconds_count")
    per_receipt = receipt_sum / max(count, 1)
    latency = statistics.mean(latencies)
    return {"latency": latency, "receipt": per_receipt, "fraction": per_receipt / latency,
            "tokens": statistics.mean(tokens)}


async def concurrent(url: str, total: int, clients: int, max_tokens: int) -> dict:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    tokens = 0
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            resp = await http.post("/v1/chat/completions", json=_chat(i, max_tokens))
            if resp.status_code == 200:
                tokens += resp.json()["usage"]["completion_tokens"]
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=1200) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"rps": total / wall, "tps": tokens / wall, "wall": wall, "errors": errors}


def run(drafter: str, args: argparse.Namespace, home: Path) -> dict | str:
    extra: list[str] = ["--drafter", drafter]
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
    srv = start_process(specguard_cmd("serve", "--port", str(port), "--log-level", "warning",
                                      "--max-queue", str(args.clients), *extra),
                        port, env={"SPECGUARD_HOME": str(home / drafter)}, timeout=300)
    try:
        seq = sequential(srv.url, args.sequential, args.max_tokens)
        conc = asyncio.run(concurrent(srv.url, args.requests, args.clients, args.max_tokens))
    finally:
        srv.stop()
        if draft is not None:
            draft.stop()
    return {**seq, **conc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests in the concurrent phase")
    parser.add_argument("--sequential", type=int, default=6, help="requests in the sequential phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--drafters", default="none,ngram,remote")
    args = parser.parse_args()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="specguard-bench-") as tmp:
        for drafter in args.drafters.split(","):
            result = run(drafter, args, Path(tmp))
            if isinstance(result, str):
                notes.append(f"- {drafter}: {result}")
                continue
            row = [drafter, f"{result['tokens']:.0f}", f"{result['latency'] * 1000:.0f}",
                   f"{result['receipt'] * 1000:.2f}", f"{result['fraction'] * 100:.2f} %",
                   f"{result['rps']:.2f}", f"{result['tps']:.1f}", str(result["errors"])]
            rows.append(row)
            print(" | ".join(row), flush=True)
    body = table(["drafter", "tokens/response", "latency ms (sequential)", "receipt ms/response",
                  "receipt share of latency", f"req/s ({args.clients} clients)", "tok/s (concurrent)", "errors"],
                 rows)
    body += (
        "\n\nDefault model (SmolLM2-135M), greedy chat requests of up to "
        f"{args.max_tokens} tokens, `--max-concurrency 1` (requests queue; the CPU is the bottleneck). "
        "\"receipt ms\" is the server's own `specguard:receipt_seconds` histogram (evidence plugins + "
        "Ed25519 signing + durable SQLite log append + response storage) per response; the share divides "
        "it by the client-measured latency of the same requests. The remote drafter is a real "
        "`specguard draft-serve` process (early-exit drafter) on loopback.\n"
    )
    if notes:
        body += "\n" + "\n".join(notes) + "\n"
    write_section("server", "HTTP server: receipt overhead and throughput",
                  f"python bench/server.py --requests {args.requests} --sequential {args.sequential} "
                  f"--max-tokens {args.max_tokens}", body)


if __name__ == "__main__":
    main()
