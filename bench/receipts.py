"""Cost of receipts per response: build + sign the statement, append to the log with fsync, verify.

Uses a synthetic 64-token transcript (no model), a fresh log in a temporary directory and the
node key machinery exactly as the server does. Writes section "receipts" of docs/benchmarks.md.

    python bench/receipts.py [--n 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _report import table, write_section  # noqa: E402

from specguard.attest import dsse  # noqa: E402
from specguard.attest.options import VerifyOptions  # noqa: E402
from specguard.attest.receipts import ReceiptIssuer, build_statement, verify_receipt  # noqa: E402
from specguard.canonical import canonical_json  # noqa: E402
from specguard.keys import load_or_create_node_key  # noqa: E402
from specguard.transcript import SamplingParams, Step, TokenRecord, Transcript  # noqa: E402


def synthetic_transcript(n: int = 64) -> Transcript:
    tokens = [TokenRecord(position=i, token_id=1000 + i, logprob=-0.1 * (i % 17) - 0.0123456) for i in range(n)]
    steps = [Step(index=s, drafter="ngram", drafted=list(range(4)), accepted=3, emitted=[0] * 4) for s in range(n // 4)]
    return Transcript(model_name="synthetic", model_digest="sha256:" + "a" * 64, tokenizer_digest="sha256:" + "b" * 64,
                      prompt_ids=list(range(32)), output_ids=[t.token_id for t in tokens], tokens=tokens, steps=steps,
                      params=SamplingParams(max_tokens=n, temperature=0.7, seed=1), finish_reason="length",
                      drafter="ngram")


class _Policy:
    name = "dev"
    digest = "sha256:" + "c" * 64


def _ms(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1e3, s[int(0.95 * (len(s) - 1))] * 1e3


def run(n: int) -> list[list[object]]:
    t = synthetic_transcript()
    request = {"model": "synthetic", "prompt": "x" * 200, "max_tokens": 64}
    response = {"id": "cmpl", "choices": [{"index": 0, "text": "y" * 300, "finish_reason": "length"}]}
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as home:
        key = load_or_create_node_key(Path(home))
        issuer = ReceiptIssuer(Path(home), key)
        build, sign, issue, verify = [], [], [], []
        doc = None
        for _ in range(n):
            t0 = time.perf_counter()
            st = build_statement(t, request, response, {}, _Policy(), key)
            t1 = time.perf_counter()
            dsse.sign_envelope(canonical_json(st), key)
            t2 = time.perf_counter()
            doc = issuer.issue(t, request, response, {}, _Policy())
            t3 = time.perf_counter()
            verify_receipt(doc, VerifyOptions(tokens=t), trusted_keys=[key.public_bytes], response=response)
            t4 = time.perf_counter()
            build.append(t1 - t0)
            sign.append(t2 - t1)
            issue.append(t3 - t2)
            verify.append(t4 - t3)
        size = issuer.log.size
        issuer.close()
    for name, samples in [("build statement (64-token root, digests)", build),
                          ("canonical JSON + DSSE Ed25519 sign", sign),
                          ("issue = build + sign + log append + fsync commit", issue),
                          ("verify offline (sig, digest, token root, inclusion)", verify)]:
        med, p95 = _ms(samples)
        rows.append([name, n, round(med, 3), round(p95, 3)])
    rows.append([f"log size after run: {size} entries", "", "", ""])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    rows = run(args.n)
    body = table(["step (per response)", "runs", "median ms", "p95 ms"], rows) + (
        "\n\n`issue` is what the server adds to each response before it is sent; the log commit waits for "
        "fsync (SQLite WAL, synchronous=FULL), so on slow disks it dominates. The fraction of response "
        "latency is measured by the server benchmark."
    )
    write_section("receipts", "Receipts and transparency log", f"python bench/receipts.py --n {args.n}", body)
    print(body)


if __name__ == "__main__":
    main()
