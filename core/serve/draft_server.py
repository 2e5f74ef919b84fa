"""The drafting server (`specguard draft-serve`): a local drafter behind a small HTTP/JSON API,
meant to run on an untrusted accelerator and be used by `--drafter remote`
(specguard.drafters.remote is its client). A process of its own, so it lives beside `serve`.

Protocol (exact shapes in docs/drafters.md):
- `POST /v1/draft/sessions` {"prompt_ids": [int], "params": {...}} -> {"session": id, "max_draft": n}
  (`max_draft`: the longest draft this server's drafter proposes; clients cap it at their own limit)
- `POST /v1/draft/sessions/{id}/propose` {"append": [int], "rollback_to": n, "k": k} -> {"tokens": [int]}
  The session's context is cropped to its first `rollback_to` tokens, then `append` is added, so
  only new tokens cross the wire; the drafter keeps its own state (e.g. a KV cache) per session.
- `DELETE /v1/draft/sessions/{id}` -> {"deleted": bool}
- `GET /v1/draft/health` -> model, drafter, max_draft, session and traffic counters.

Sessions expire after `idle_seconds` without use; at most `max_sessions` live at once. Each session
belongs to the client that created it (its API key when the server has keys, else its address):
only that client can use or delete it, and each client holds at most `max_sessions_per_client`.
A client at its quota replaces its own least recently used session; when the server is full, a new
session replaces the least recently used one of the client holding the most sessions, and only if
that client holds more than the requester: no client can push another below its own share. When
nothing may be evicted the answer is 429. An evicted session's client recreates it on a 404.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import click
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from ..drafters.ahead import AheadDrafter, with_draft_ahead
from ..drafters.base import Drafter
from ..engine.factory import make_drafter
from ..errors import UsageError
from ..models import LoadedModel, load_model
from ..transcript import SamplingParams
from ..web.base import create_base_app, parse_bearer, run_uvicorn, server_options, server_security

MAX_K = 64
#: request bodies are token-id lists; 4 MiB holds far more than any context
MAX_BODY_BYTES = 4 * 1024 * 1024
PROTOCOL = "specguard-draft/v1"


class DraftParams(BaseModel):
    """What the verifier tells the drafter about decoding. Never a seed for untrusted drafters."""

    model_config = ConfigDict(extra="ignore")
    temperature: StrictFloat | StrictInt = 0.0
    top_p: StrictFloat | StrictInt = 1.0
    top_k: StrictInt = 0
    max_tokens: StrictInt = 128


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_ids: Annotated[list[StrictInt], Field(min_length=1)]
    params: DraftParams = DraftParams()


class ProposeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    append: list[StrictInt] = []
    rollback_to: Annotated[StrictInt, Field(ge=0)]
    k: Annotated[StrictInt, Field(ge=0, le=MAX_K)]


@dataclass
class _Session:
    drafter: Drafter
    context: list[int]
    last_used: float
    owner: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set (under `lock`) once the drafter is finished: a propose racing an eviction gets a 404
    closed: bool = False


class DraftSessions:
    """Per-request drafter sessions with an idle timeout and a bound on their number."""

    def __init__(
        self,
        target: LoadedModel,
        make: Callable[[], Drafter],
        *,
        max_sessions: int = 64,
        idle_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_sessions_per_client: int | None = None,
    ) -> None:
        self.target = target
        self.max_sessions_per_client = min(max_sessions, max_sessions_per_client or max_sessions)
        self.vocab_size = target.vocab_size
        self.max_context = target.max_context
        self._make = make
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self.counters = {"sessions_created": 0, "sessions_expired": 0, "sessions_evicted": 0, "sessions_refused": 0,
                         "proposals": 0, "tokens_received": 0, "tokens_proposed": 0}

    def _check_ids(self, ids: list[int], name: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise HTTPException(400, detail={"field": name, "error": "token id outside the vocabulary", "got": bad, "expected": f"0..{self.vocab_size - 1}"})

    def _expire(self, now: float) -> list[_Session]:
        """Remove idle sessions (call under self._lock); finish them with _finish() after releasing it."""
        gone = []
        for sid in [s for s, sess in self._sessions.items() if now - sess.last_used > self.idle_seconds]:
            gone += self._drop(sid)
            self.counters["sessions_expired"] += 1
        return gone

    def _drop(self, sid: str) -> list[_Session]:
        session = self._sessions.pop(sid, None)
        return [session] if session is not None else []

    @staticmethod
    def _finish(sessions: list[_Session]) -> None:
        """Finish dropped sessions' drafters, each under its own lock (never while a propose runs on it,
        and never under the sessions lock: a draft-ahead drafter joins its thread here)."""
        for session in sessions:
            with session.lock:
                session.closed = True
                try:
                    session.drafter.finish()
                except Exception:  # a drafter's cleanup failing must not break the server
                    pass

    def _make_room(self, owner: str) -> list[_Session]:
        """Evict for `owner`'s new session (call under self._lock): its own oldest at its quota, else,
        when full, the oldest of the biggest holder if that one holds more than `owner`; 429 otherwise."""
        counts: dict[str, int] = {}
        for sess in self._sessions.values():
            counts[sess.owner] = counts.get(sess.owner, 0) + 1
        mine = counts.get(owner, 0)
        if mine >= self.max_sessions_per_client:
            victim_owner = owner
        elif len(self._sessions) >= self.max_sessions:
            victim_owner = max(counts, key=lambda o: (counts[o], o == owner))
            if victim_owner != owner and counts[victim_owner] <= mine + 1:
                self.counters["sessions_refused"] += 1
                raise HTTPException(429, detail={"field": "session", "error": "the drafting server is full and no "
                                                 "client holds more sessions than its share", "got": mine,
                                                 "expected": f"{self.max_sessions} sessions in all"})
        else:
            return []
        oldest = min((s for s, sess in self._sessions.items() if sess.owner == victim_owner),
                     key=lambda s: self._sessions[s].last_used)
        self.counters["sessions_evicted"] += 1
        return self._drop(oldest)

    def _owned(self, sid: str, owner: str | None) -> _Session | None:
        session = self._sessions.get(sid)
        return session if session is not None and (owner is None or session.owner == owner) else None

    def create(self, body: CreateSession, owner: str = "") -> str:
        ids = list(body.prompt_ids)
        self._check_ids(ids, "prompt_ids")
        if len(ids) >= self.max_context:
            raise HTTPException(400, detail={"field": "prompt_ids", "error": "context too long", "got": len(ids), "expected": f"< {self.max_context}"})
        p = body.params
        try:
            params = SamplingParams(max_tokens=max(1, p.max_tokens), temperature=float(p.temperature), top_p=float(p.top_p), top_k=p.top_k)
        except Exception as exc:
            raise HTTPException(400, detail={"field": "params", "error": str(exc)[:200]}) from exc
        drafter = self._make()
        drafter.start(ids, params)
        now = self._clock()
        refusal: HTTPException | None = None
        sid = secrets.token_urlsafe(16)
        with self._lock:
            gone = self._expire(now)
            try:
                gone += self._make_room(owner)
            except HTTPException as exc:
                refusal = exc
                gone.append(_Session(drafter=drafter, context=ids, last_used=now, owner=owner))
            else:
                self._sessions[sid] = _Session(drafter=drafter, context=ids, last_used=now, owner=owner)
                self.counters["sessions_created"] += 1
                self.counters["tokens_received"] += len(ids)
        self._finish(gone)
        if refusal is not None:
            raise refusal
        return sid

    def propose(self, sid: str, body: ProposeRequest, owner: str | None = None) -> list[int]:
        with self._lock:
            gone = self._expire(self._clock())
            session = self._owned(sid, owner)
        self._finish(gone)
        if session is None:
            raise HTTPException(404, detail={"field": "session", "error": "unknown or expired session"})
        append = list(body.append)
        self._check_ids(append, "append")
        with session.lock:
            if session.closed:  # evicted or deleted while this request waited for the lock
                raise HTTPException(404, detail={"field": "session", "error": "unknown or expired session"})
            if body.rollback_to > len(session.context):
                raise HTTPException(409, detail={"field": "rollback_to", "error": "beyond the session's context", "got": body.rollback_to, "expected": f"<= {len(session.context)}"})
            context = session.context[: body.rollback_to] + append
            if not context or len(context) >= self.max_context:
                raise HTTPException(400, detail={"field": "append", "error": "context empty or too long", "got": len(context), "expected": f"1..{self.max_context - 1}"})
            session.context = context
            session.last_used = self._clock()
            k = min(body.k, self.max_context - len(context))
            tokens: list[int] = []
            if k > 0:
                proposal = session.drafter.propose(list(context), k)
                tokens = [int(t) for t in proposal.tokens][:k]
        with self._lock:
            self.counters["proposals"] += 1
            self.counters["tokens_received"] += len(append)
            self.counters["tokens_proposed"] += len(tokens)
        return tokens

    def delete(self, sid: str, owner: str | None = None) -> bool:
        with self._lock:
            gone = self._drop(sid) if self._owned(sid, owner) is not None else []
        self._finish(gone)
        return bool(gone)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            gone = self._expire(self._clock())
            out = {"sessions": len(self._sessions), "max_sessions": self.max_sessions,
                   "max_sessions_per_client": self.max_sessions_per_client, **self.counters}
        self._finish(gone)
        return out


def create_draft_app(
    target: LoadedModel,
    drafter_name: str = "early-exit",
    options: dict[str, Any] | None = None,
    *,
    max_sessions: int = 64,
    idle_seconds: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
    api_keys: Iterable[str] = (),
    max_sessions_per_client: int | None = None,
) -> FastAPI:
    """The drafting server's FastAPI app: one `drafter_name` drafter per session over `target`.

    Built on the common server base (OpenAI error shape, streamed body limit, optional bearer
    auth with `api_keys`; `/v1/draft/health` stays open)."""
    if drafter_name == "remote":
        raise UsageError("a drafting server cannot itself use the remote drafter", field="drafter", got=drafter_name)
    opts = dict(options or {})

    def make() -> Drafter:
        return with_draft_ahead(make_drafter(drafter_name, target, opts), opts)

    probe = make()  # fail at startup, not on the first request
    # what this server's drafter can use (the engine drafters, llamacpp: 32); clients take the
    # minimum of this and their own cap
    max_draft = max(1, min(MAX_K, int(getattr(probe, "max_draft", Drafter.max_draft))))
    sessions = DraftSessions(target, make, max_sessions=max_sessions, idle_seconds=idle_seconds, clock=clock,
                             max_sessions_per_client=max_sessions_per_client)
    app = create_base_app("specguard drafting server", version=PROTOCOL, api_keys=api_keys,
                          body_limit=MAX_BODY_BYTES, public_paths=("/health", "/v1/draft/health"),
                          public_prefixes=())
    app.state.sessions = sessions

    @app.get("/v1/draft/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "protocol": PROTOCOL,
            "model": target.name,
            "vocab_size": sessions.vocab_size,
            "drafter": drafter_name,
            "max_k": MAX_K,
            "max_draft": max_draft,
            "draft_ahead": isinstance(probe, AheadDrafter),
            **sessions.stats(),
        }

    @app.post("/v1/draft/sessions")
    def create(body: CreateSession, request: Request) -> dict[str, Any]:
        return {"session": sessions.create(body, client_of(request)), "max_draft": max_draft}

    @app.post("/v1/draft/sessions/{sid}/propose")
    def propose(sid: str, body: ProposeRequest, request: Request) -> dict[str, list[int]]:
        return {"tokens": sessions.propose(sid, body, client_of(request))}

    @app.delete("/v1/draft/sessions/{sid}")
    def delete(sid: str, request: Request) -> dict[str, bool]:
        return {"deleted": sessions.delete(sid, client_of(request))}

    return app


def client_of(request: Request) -> str:
    """Who owns the sessions a request creates: its API key (hashed) when it sends one, else its address."""
    token = parse_bearer(request.scope.get("headers", []))
    if token:
        return "key:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client is not None else "unknown")


# --- the command -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftServeConfig:
    """The `specguard draft-serve` options (click validates their ranges)."""

    model_ref: str | None = None
    drafter: str = "early-exit"
    draft_model: str | None = None
    exit_layer: int | None = None
    host: str = "127.0.0.1"
    port: int = 8100
    max_sessions: int = 64
    max_sessions_per_client: int = 16
    session_idle_seconds: float = 300.0
    draft_ahead: bool = False
    drafter_threads: int | None = None
    api_key: str | None = None
    api_keys_file: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_cli(cls, **options: Any) -> DraftServeConfig:
        return cls(**options)

    def drafter_options(self) -> dict[str, Any]:
        return {"draft_model": self.draft_model, "exit_layer": self.exit_layer, "draft_ahead": self.draft_ahead,
                "n_threads": self.drafter_threads}


@click.command(name="draft-serve")
@click.option("-m", "--model", "model_ref", default=None, help="Model to draft with (default smollm2-135m).")
@click.option("-d", "--drafter", default="early-exit", show_default=True, help="Local drafter behind the server.")
@click.option("--draft-model", default=None, help="Draft model reference for --drafter draft-model.")
@click.option("--exit-layer", type=int, default=None, help="Layers used by --drafter early-exit.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8100, show_default=True, help="TCP port to listen on.")
@click.option("--max-sessions", type=click.IntRange(1, 100000), default=64, show_default=True,
              help="Drafting sessions kept at once; when full, a new one evicts only from a client above its share.")
@click.option("--max-sessions-per-client", type=click.IntRange(1, 100000), default=16, show_default=True,
              help="Sessions one client (API key, else address) may hold; when full, no client can evict "
                   "another below its own share.")
@click.option("--session-idle-seconds", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              help="A session unused this long is dropped.")
@click.option("--draft-ahead", is_flag=True,
              help="Draft the next block while the verifier checks this one (docs/drafters.md, draft-ahead).")
@click.option("--drafter-threads", type=click.IntRange(1, 1024), default=None,
              help="llama.cpp threads for --drafter llamacpp (default 1).")
@server_options
def draft_serve_command(**options: Any) -> None:
    """Serve draft proposals over HTTP for `--drafter remote` verifiers (untrusted accelerators)."""
    config = DraftServeConfig.from_cli(**options)
    security = server_security(config.api_key, config.api_keys_file, config.ssl_certfile, config.ssl_keyfile)
    target = load_model(config.model_ref)
    app = create_draft_app(target, config.drafter, config.drafter_options(), max_sessions=config.max_sessions,
                           max_sessions_per_client=config.max_sessions_per_client,
                           idle_seconds=config.session_idle_seconds, api_keys=security.api_keys)
    click.echo(f"drafting server for {target.name} ({config.drafter}) on "
               f"{security.scheme}://{config.host}:{config.port}/v1/draft", err=True)
    run_uvicorn(app, config.host, config.port, security)
