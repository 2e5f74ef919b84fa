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
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..canonical import json_digest
from ..engine.speculative import SpeculativeEngine
from ..errors import SpecguardError
from ..models import LoadedModel, load_model
from ..transcript import SamplingParams, Transcript
from ..web.base import create_base_app
from . import AuditUsageError
from .substitutes import Substitute, apply_substitute, mixed_in, parse_substitute
from .tokens import TokenMap

log = logging.getLogger("specguard.audit.simulate")


@dataclass(frozen=True)
class Misbehaviour:
    """How the simulated provider misbehaves (all off: an honest, well-behaved provider)."""

    no_logprobs: bool = False  # never return logprobs, even when asked
    ignore_seed: bool = False  # replace each request's seed with a random one
    fail_rate: float = 0.0  # share of 429/500 answers
    malformed_rate: float = 0.0  # share of answers cut off into malformed JSON
    unmappable_rate: float = 0.0  # share of tokens with bogus bytes
    slow: float = 0.0  # seconds to wait before each answer
    retry_after: float = 1.0  # Retry-After seconds sent with the simulated failures
    fault_seed: int = 0  # seed of the random faults

    def __post_init__(self) -> None:
        for name in ("fail_rate", "malformed_rate", "unmappable_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise AuditUsageError("a share must be in [0, 1]", field=name, got=getattr(self, name),
                                      expected="[0, 1]")
        for name in ("slow", "retry_after"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise AuditUsageError("seconds must be finite and not negative", field=name,
                                      got=getattr(self, name), expected=">= 0")


@dataclass
class Switch:
    """A silent model change: after `after` answered requests, serve `substitute` (or another `model`)."""

    after: int
    substitute: Substitute | None = None
    model: LoadedModel | None = None


@dataclass(frozen=True)
class SimulatorConfig:
    """`audit simulate`'s options, validated when made (AuditUsageError naming the field)."""

    reference: str  # model reference to serve
    substitute: str | None = None  # q8|int8|q4|q3|prune:N|noise:S|mix:SUB:FRAC (None: honest)
    host: str = "127.0.0.1"
    port: int = 8765
    threads: int | None = None  # torch CPU threads (honest variation)
    served_name: str | None = None  # model name to report (default: the reference's)
    misbehave: Misbehaviour = field(default_factory=Misbehaviour)
    switch_after: int | None = None  # answer N requests honestly, then switch to `switch_to`
    switch_to: str | None = None  # a substitute spec or model:REF
    reference_runtime: str = "torch"  # "llamacpp": serve a GGUF as is (no substitutes: they transform torch weights)

    def __post_init__(self) -> None:
        if self.reference_runtime not in ("torch", "llamacpp"):
            raise AuditUsageError("unknown runtime", field="reference_runtime", got=self.reference_runtime,
                                  expected=["torch", "llamacpp"])
        needs_torch = self.substitute is not None or (self.switch_to is not None
                                                       and not self.switch_to.startswith("model:"))
        if self.reference_runtime == "llamacpp" and needs_torch:
            raise AuditUsageError("substitutes transform torch weights", field="reference_runtime", got="llamacpp",
                                  expected="torch with --substitute or --switch-to SUBSTITUTE")
        if (self.switch_after is None) != (self.switch_to is None) or (self.switch_after or 0) < 0:
            raise AuditUsageError("--switch-after N and --switch-to go together", field="switch_after",
                                  got=self.switch_after, expected="N >= 0 with --switch-to")

    @classmethod
    def from_cli(cls, **options: Any) -> SimulatorConfig:
        """From `audit simulate`'s options, named as the fields and Misbehaviour's."""
        faults = {name: options.pop(name) for name in Misbehaviour.__dataclass_fields__ if name in options}
        return cls(misbehave=Misbehaviour(**faults), **options)

    def build_app(self) -> FastAPI:
        """Load the reference (and a switched-to model) and build the provider app."""
        sub = parse_substitute(self.substitute) if self.substitute else None
        ref = load_model(self.reference, runtime=self.reference_runtime)
        switch = None
        switch_after, switch_to = self.switch_after, self.switch_to
        if switch_to is not None and switch_after is not None:
            switch = (Switch(switch_after, model=load_model(switch_to[6:])) if switch_to.startswith("model:")
                      else Switch(switch_after, substitute=parse_substitute(switch_to)))
        return build_app(ref, sub, self.misbehave, self.served_name, switch)


@dataclass
class SimulatorState:
    """What the simulator's handlers share (`app.state.simulator`): the models, the faults and their RNG."""

    reference: LoadedModel
    served: LoadedModel  # the reference transformed by `substitute` (the reference itself when honest)
    substitute: Substitute | None
    misbehave: Misbehaviour
    name: str  # the model name the answers report
    switch: Switch | None = None
    switched_to: LoadedModel | None = None
    answered: int = 0
    tmap: TokenMap = field(init=False)
    rng: random.Random = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.tmap = TokenMap(self.reference.tokenizer, self.reference.vocab_size)
        self.rng = random.Random(self.misbehave.fault_seed)

    @property
    def switched(self) -> bool:
        return self.switch is not None and self.answered >= self.switch.after

    def token_entry(self, tid: int, lp: float) -> dict[str, Any]:
        """One token in the OpenAI logprobs shape (bogus bytes at the --unmappable-rate)."""
        raw = self.tmap.bytes_of[tid] or b""
        if self.misbehave.unmappable_rate and self.rng.random() < self.misbehave.unmappable_rate:
            raw = b"\xff\xfe\xfd-unmappable"
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(raw)}


@dataclass(frozen=True)
class SimRequest:
    """A parsed chat or completions request."""

    kind: str  # "chat" or "completions"
    messages: Any  # the chat messages, or the completions prompt text (what decides a mix)
    prompt_ids: list[int]
    params: SamplingParams
    want_lp: bool
    top_n: int


router = APIRouter()


def _sim(request: Request) -> SimulatorState:
    return request.app.state.simulator


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    sim = _sim(request)
    return {"ok": True, "substitute": sim.substitute.spec if sim.substitute else None, "switched": sim.switched}


@router.get("/v1/models")
def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": _sim(request).name, "object": "model"}]}


@router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    return await respond(request, "chat")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await respond(request, "completions")


def build_app(reference: LoadedModel, substitute: Substitute | None = None, misbehave: Misbehaviour | None = None,
              served_name: str | None = None, switch: Switch | None = None) -> FastAPI:
    """The provider app: serves `reference` transformed by `substitute` (all or a mix of requests);
    with `switch`, the switched-to model answers from the (after+1)-th answered request on."""
    served = apply_substitute(reference, substitute) if substitute else reference
    switched_to: LoadedModel | None = None
    if switch is not None:
        switched_to = switch.model or (apply_substitute(reference, switch.substitute) if switch.substitute else None)
    app = create_base_app("specguard simulated provider")
    app.state.simulator = SimulatorState(reference, served, substitute, misbehave or Misbehaviour(),
                                         served_name or reference.name, switch, switched_to)
    app.include_router(router)
    return app


async def respond(request: Request, kind: str) -> Response:
    """Answer one chat or completions request (or misbehave as configured)."""
    sim = _sim(request)
    bad = sim.misbehave
    if bad.slow:
        time.sleep(bad.slow)
    with sim.lock:
        roll = sim.rng.random()
        roll2 = sim.rng.random()
    if roll < bad.fail_rate:
        status = 429 if roll2 < 0.5 else 500
        return JSONResponse({"error": {"message": "simulated failure"}}, status_code=status,
                            headers={"Retry-After": f"{bad.retry_after:g}"})
    try:
        req = parse_request(sim, await request.body(), kind)
        transcript = generate(sim, req)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, SpecguardError) as exc:
        return JSONResponse({"error": {"message": f"bad request: {exc}"}}, status_code=400)
    text = json.dumps(answer_json(sim, req, transcript))
    with sim.lock:
        broken = sim.rng.random() < bad.malformed_rate
    if broken:
        text = text[: len(text) // 2]
    return Response(text, media_type="application/json")


def parse_request(sim: SimulatorState, raw: bytes, kind: str) -> SimRequest:
    """The request's prompt (chat template applied, or raw text) and sampling parameters; ValueError & co if bad."""
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("body is not an object")
    if kind == "chat":
        messages = body["messages"]
        prompt_ids = sim.reference.encode_chat([{"role": str(m["role"]), "content": str(m["content"])}
                                                for m in messages])
    else:
        if not isinstance(body["prompt"], str):
            raise ValueError("prompt must be a string")
        messages = body["prompt"]
        prompt_ids = sim.reference.encode(messages)
    seed = body.get("seed")
    if sim.misbehave.ignore_seed:
        seed = sim.rng.getrandbits(62)
    params = SamplingParams(
        max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        top_k=int(body.get("top_k") or 0),  # specguard's seeded-sampling contract (docs/audit.md)
        seed=seed,
    )
    want_lp = bool(body.get("logprobs")) and not sim.misbehave.no_logprobs
    top_field = "top_logprobs" if kind == "chat" else "logprobs"
    top_n = min(20, int(body.get(top_field) or 0)) if want_lp else 0
    return SimRequest(kind, messages, prompt_ids, params, want_lp, top_n)


def generate(sim: SimulatorState, req: SimRequest) -> Transcript:
    """The served model's answer: the substitute (for its share of prompts) or, after a switch, the switched-to one."""
    key = json_digest({"messages": req.messages})
    substitute, reference, prompt_ids, params, top_n = sim.substitute, sim.reference, req.prompt_ids, req.params, req.top_n
    model = sim.served if (substitute is None or mixed_in(substitute, key)) else reference
    with sim.lock:
        if sim.switch is not None and sim.switched_to is not None and sim.switched:
            sub = sim.switch.substitute
            model = sim.switched_to if (sub is None or mixed_in(sub, key)) else reference
        transcript = plain_engine(model).generate(prompt_ids, params, top_logprobs=top_n)
        sim.answered += 1
    return transcript


def _logprobs(sim: SimulatorState, req: SimRequest, records: list[Any]) -> dict[str, Any] | None:
    """The answer's logprobs in the endpoint's shape (legacy completions: tokens / token_logprobs / top_logprobs)."""
    top_n = req.top_n
    if not req.want_lp:
        return None
    if req.kind == "completions":
        def text_of(tid: int) -> str:
            return sim.token_entry(tid, 0.0)["token"]

        return {"tokens": [text_of(r.token_id) for r in records],
                "token_logprobs": [r.logprob for r in records],
                "top_logprobs": [{text_of(t): lp for t, lp in r.top[:top_n]} for r in records],
                "text_offset": []}
    return {"content": [
        {**sim.token_entry(r.token_id, r.logprob),
         "top_logprobs": [sim.token_entry(t, lp) for t, lp in r.top[:top_n]]}
        for r in records
    ]}


def answer_json(sim: SimulatorState, req: SimRequest, transcript: Transcript) -> dict[str, Any]:
    """The chat.completion (or text_completion) object for a transcript."""
    kind = req.kind
    records = transcript.tokens
    ids = list(transcript.output_ids)
    if transcript.finish_reason == "stop" and ids and ids[-1] in sim.reference.eos_token_ids:
        ids, records = ids[:-1], records[:-1]
    content = sim.reference.tokenizer.decode(ids, skip_special_tokens=False)
    choice: dict[str, Any] = {"index": 0, "logprobs": _logprobs(sim, req, records),
                              "finish_reason": transcript.finish_reason}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": content}
    else:
        choice["text"] = content
    return {
        "id": ("chatcmpl-" if kind == "chat" else "cmpl-") + transcript.binding_digest()[7:31],
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": sim.name,
        "choices": [choice],
        "usage": {"prompt_tokens": len(req.prompt_ids), "completion_tokens": len(ids),
                  "total_tokens": len(req.prompt_ids) + len(ids)},
    }


def plain_engine(model: LoadedModel) -> Any:
    """The model's own plain decoding: llama.cpp for a llama.cpp-runtime GGUF, else the torch engine."""
    if model.runtime == "llamacpp":
        from ..drafters.base import NoDrafter
        from ..engine.factory import make_engine

        return make_engine(model, NoDrafter(), "llamacpp")
    return SpeculativeEngine(model)


def serve(app: FastAPI, host: str, port: int, limits: Any = None) -> None:
    """Run the app with uvicorn (blocking), behind the same connection limits as every server
    (`specguard.web.base.run_uvicorn`: header and idle timeouts, connection caps)."""
    from ..web.base import run_uvicorn

    run_uvicorn(app, host, port, limits=limits)
