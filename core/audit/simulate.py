"""A loopback OpenAI-compatible provider serving the reference or a transformed copy of it.

Used for power analysis (`specguard audit simulate`) and by the tests. It implements
`POST /v1/chat/completions` (greedy or seeded sampling through the SpeculativeEngine, with
`logprobs` / `top_logprobs` in the OpenAI shape including token `bytes`), the legacy
`POST /v1/completions` (raw-text `prompt`, integer `logprobs`, answers in the legacy logprobs
shape: `tokens`, `token_logprobs`, `top_logprobs` as {token: logprob}), `GET /v1/models` and
`GET /health`. Sampled requests follow specguard's seeded sampling contract exactly as a node does
(the engine's Gumbel-max with the request's `seed`, `temperature`, `top_p`, `top_k`; docs/audit.md),
so an honest simulated provider passes the seeded-exact test. Misbehaviour flags make it a realistic
bad provider: no logprobs, ignored seeds,
429/500 storms with Retry-After, malformed JSON, slow answers, tokens that do not map.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..canonical import json_digest
from ..engine.speculative import SpeculativeEngine
from ..errors import SpecguardError
from ..models import LoadedModel
from ..server.base import create_base_app
from ..transcript import SamplingParams
from .substitutes import Substitute, apply_substitute, mixed_in
from .tokens import TokenMap

log = logging.getLogger("specguard.audit.simulate")


@dataclass
class Misbehaviour:
    no_logprobs: bool = False
    ignore_seed: bool = False
    fail_rate: float = 0.0
    malformed_rate: float = 0.0
    unmappable_rate: float = 0.0
    slow: float = 0.0
    retry_after: float = 1.0
    fault_seed: int = 0


@dataclass
class Switch:
    """A silent model change: after `after` answered requests, serve `substitute` (or another `model`)."""

    after: int
    substitute: Substitute | None = None
    model: LoadedModel | None = None


def build_app(reference: LoadedModel, substitute: Substitute | None = None, misbehave: Misbehaviour | None = None,
              served_name: str | None = None, switch: Switch | None = None) -> FastAPI:
    """The provider app: serves `reference` transformed by `substitute` (all or a mix of requests);
    with `switch`, the switched-to model answers from the (after+1)-th answered request on."""
    bad = misbehave or Misbehaviour()
    served = apply_substitute(reference, substitute) if substitute else reference
    switched_to: LoadedModel | None = None
    if switch is not None:
        switched_to = switch.model or (apply_substitute(reference, switch.substitute) if switch.substitute else None)
    answered = [0]
    tmap = TokenMap(reference.tokenizer, reference.vocab_size)
    lock = threading.Lock()
    rng = random.Random(bad.fault_seed)
    name = served_name or reference.name
    app = create_base_app("specguard simulated provider")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "substitute": substitute.spec if substitute else None,
                "switched": switch is not None and answered[0] >= switch.after}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    def token_entry(tid: int, lp: float) -> dict[str, Any]:
        raw = tmap.bytes_of[tid] or b""
        if bad.unmappable_rate and rng.random() < bad.unmappable_rate:
            raw = b"\xff\xfe\xfd-unmappable"
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(raw)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await respond(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await respond(request, "completions")

    async def respond(request: Request, kind: str) -> Response:
        if bad.slow:
            time.sleep(bad.slow)
        with lock:
            roll = rng.random()
            roll2 = rng.random()
        if roll < bad.fail_rate:
            status = 429 if roll2 < 0.5 else 500
            return JSONResponse({"error": {"message": "simulated failure"}}, status_code=status,
                                headers={"Retry-After": f"{bad.retry_after:g}"})
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
            if kind == "chat":
                messages = body["messages"]
                prompt_ids = reference.encode_chat([{"role": str(m["role"]), "content": str(m["content"])}
                                                    for m in messages])
            else:
                if not isinstance(body["prompt"], str):
                    raise ValueError("prompt must be a string")
                messages = body["prompt"]
                prompt_ids = reference.encode(messages)
            seed = body.get("seed")
            if bad.ignore_seed:
                seed = rng.getrandbits(62)
            params = SamplingParams(
                max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                top_k=int(body.get("top_k") or 0),  # specguard's seeded-sampling contract (docs/audit.md)
                seed=seed,
            )
            want_lp = bool(body.get("logprobs")) and not bad.no_logprobs
            top_field = "top_logprobs" if kind == "chat" else "logprobs"
            top_n = min(20, int(body.get(top_field) or 0)) if want_lp else 0
            key = json_digest({"messages": messages})
            model = served if (substitute is None or mixed_in(substitute, key)) else reference
            with lock:
                if switch is not None and switched_to is not None and answered[0] >= switch.after:
                    sub = switch.substitute
                    model = switched_to if (sub is None or mixed_in(sub, key)) else reference
                transcript = plain_engine(model).generate(prompt_ids, params, top_logprobs=top_n)
                answered[0] += 1
        except (KeyError, TypeError, ValueError, json.JSONDecodeError, SpecguardError) as exc:
            return JSONResponse({"error": {"message": f"bad request: {exc}"}}, status_code=400)
        records = transcript.tokens
        ids = list(transcript.output_ids)
        if transcript.finish_reason == "stop" and ids and ids[-1] in reference.eos_token_ids:
            ids, records = ids[:-1], records[:-1]
        content = reference.tokenizer.decode(ids, skip_special_tokens=False)
        logprobs = None
        if want_lp and kind == "completions":
            def text_of(tid: int) -> str:
                return token_entry(tid, 0.0)["token"]

            logprobs = {"tokens": [text_of(r.token_id) for r in records],
                        "token_logprobs": [r.logprob for r in records],
                        "top_logprobs": [{text_of(t): lp for t, lp in r.top[:top_n]} for r in records],
                        "text_offset": []}
        elif want_lp:
            logprobs = {"content": [
                {**token_entry(r.token_id, r.logprob), "top_logprobs": [token_entry(t, lp) for t, lp in r.top[:top_n]]}
                for r in records
            ]}
        choice: dict[str, Any] = {"index": 0, "logprobs": logprobs, "finish_reason": transcript.finish_reason}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        answer = {
            "id": ("chatcmpl-" if kind == "chat" else "cmpl-") + transcript.binding_digest()[7:31],
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [choice],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                      "total_tokens": len(prompt_ids) + len(ids)},
        }
        text = json.dumps(answer)
        with lock:
            broken = rng.random() < bad.malformed_rate
        if broken:
            text = text[: len(text) // 2]
        return Response(text, media_type="application/json")

    return app


def plain_engine(model: LoadedModel) -> Any:
    """The model's own plain decoding: llama.cpp for a llama.cpp-runtime GGUF, else the torch engine."""
    if model.runtime == "llamacpp":
        from ..drafters.base import NoDrafter
        from ..engine.factory import make_engine

        return make_engine(model, NoDrafter(), "llamacpp")
    return SpeculativeEngine(model)


def serve(app: FastAPI, host: str, port: int, limits: Any = None) -> None:
    """Run the app with uvicorn (blocking), behind the same connection limits as every server
    (`specguard.server.base.run_uvicorn`: header and idle timeouts, connection caps)."""
    from ..server.base import run_uvicorn

    run_uvicorn(app, host, port, limits=limits)
