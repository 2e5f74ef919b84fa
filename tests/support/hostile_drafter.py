"""A hostile drafting server for tests: speaks (or abuses) the remote-drafter protocol.

    python tests/support/hostile_drafter.py --port P --mode MODE [--vocab-size V] [--model DIR]

Modes:
- garbage: cycles through non-JSON bodies, wrong JSON types, out-of-range ids, HTTP 500,
  deeply nested JSON, bad session ids;
- wrong-length: valid token ids, but more than k of them;
- adversarial: plausible in-range tokens (copies of the context's tail) plus "probs" rows that
  would make speculative sampling accept every token if anyone used them;
- slow: correct-looking answers after 3 s (longer than the client's timeout);
- least-likely: the target's least likely token at every position (needs --model DIR);
- huge: an 8 MB answer;
- nan-probs: plausible tokens with NaN probabilities.
`GET /stats` counts the requests it received (to check a cut-off drafter is not contacted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

MODES = ("garbage", "wrong-length", "adversarial", "slow", "least-likely", "huge", "nan-probs")


def create_hostile_app(mode: str, vocab_size: int = 64, model_dir: str | None = None) -> FastAPI:
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; expected one of {MODES}")
    app = FastAPI()
    stats = {"create": 0, "propose": 0, "delete": 0}
    sessions: dict[str, list[int]] = {}
    target = None
    if mode == "least-likely":
        if not model_dir:
            raise SystemExit("--mode least-likely needs --model DIR")
        from specguard.models import load_model

        target = load_model(model_dir)
    huge = json.dumps({"tokens": list(range(vocab_size)) * (8_000_000 // (3 * vocab_size) + 1)}).encode()

    def tail(context: list[int], k: int) -> list[int]:
        return [int(t) % vocab_size for t in (context[-k:] if context else [0] * k)][:k]

    def least_likely(context: list[int], k: int) -> list[int]:
        import torch

        # the first token decides the step: it is always rejected, the rest never matter
        with torch.inference_mode():
            logits = target.model(input_ids=torch.tensor([context])).logits[0, -1]
        return [int(torch.argmin(logits))] * k

    @app.get("/stats")
    def get_stats() -> dict[str, int]:
        return dict(stats)

    @app.get("/v1/draft/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "mode": mode}

    @app.post("/v1/draft/sessions")
    async def create(request: Request) -> Response:
        stats["create"] += 1
        body = json.loads(await request.body())
        sid = secrets.token_hex(8)
        sessions[sid] = [int(t) for t in body.get("prompt_ids", [])]
        if mode == "garbage" and stats["create"] % 3 == 0:
            bad = ["../../etc/passwd", 12345, "x" * 500, None][stats["create"] // 3 % 4]
            return JSONResponse({"session": bad})
        return JSONResponse({"session": sid})

    @app.post("/v1/draft/sessions/{sid}/propose")
    async def propose(sid: str, request: Request) -> Response:
        stats["propose"] += 1
        n = stats["propose"]
        body = json.loads(await request.body())
        k = int(body.get("k", 1))
        context = sessions.get(sid, [])[: int(body.get("rollback_to", 0))] + [int(t) for t in body.get("append", [])]
        sessions[sid] = context
        if mode == "garbage":
            choices: list[Any] = [
                Response(b"\x00\xffnot json at all", media_type="application/json"),
                JSONResponse([1, 2, 3]),
                JSONResponse({"tokens": "1 2 3"}),
                JSONResponse({"tokens": [1.5, "x", None, True][:k]}),
                JSONResponse({"tokens": [-1, vocab_size, 10**30][:k]}),
                Response(b"internal error", status_code=500),
                JSONResponse({"tokens": [[1, 2]]}),
                Response(b"[" * 100_000 + b"]" * 100_000, media_type="application/json"),
                JSONResponse({"tokens": {"0": 1}}),
                Response(status_code=404),
            ]
            return choices[n % len(choices)]
        if mode == "wrong-length":
            return JSONResponse({"tokens": [(7 * i + n) % vocab_size for i in range(k + 1 + n % 5)]})
        if mode == "adversarial":
            tokens = tail(context, k)
            probs = [[1e-30 if j == t else (1 - 1e-30) / (vocab_size - 1) for j in range(vocab_size)] for t in tokens]
            return JSONResponse({"tokens": tokens, "probs": probs, "accepted": True, "seed": 0})
        if mode == "slow":
            await asyncio.sleep(3.0)
            return JSONResponse({"tokens": tail(context, k)})
        if mode == "least-likely":
            return JSONResponse({"tokens": least_likely(context, k)})
        if mode == "huge":
            return Response(huge, media_type="application/json")
        # nan-probs
        tokens = tail(context, k)
        return Response(json.dumps({"tokens": tokens, "probs": [[float("nan")] * vocab_size for _ in tokens]}).encode(), media_type="application/json")

    @app.delete("/v1/draft/sessions/{sid}")
    def delete(sid: str) -> dict[str, bool]:
        stats["delete"] += 1
        return {"deleted": sessions.pop(sid, None) is not None}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    app = create_hostile_app(args.mode, args.vocab_size, args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
