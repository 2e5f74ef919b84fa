"""The `remote` drafter: proposals from an untrusted drafting server (`specguard draft-serve`).

The remote drafter is untrusted for integrity: its tokens are proposals the target verifies, its
probabilities (if it sends any) are never read, and it never receives the sampling seed. Any
failure (refused connection, timeout, HTTP error, an answer that is not the protocol's) costs at
most that step's draft: the step drafts with the local fallback drafter instead, and the request
goes on. Drafters that keep failing or whose proposals are rarely accepted are cut off for a
cool-down (see specguard.drafters.health). It is NOT untrusted for confidentiality: it sees the
prompt and the output as they are generated (docs/drafters.md).
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import RequestError, UsageError
from ..hookspecs import hookimpl
from ..transcript import SamplingParams
from ..web import http
from .base import Drafter, NoDrafter, Proposal
from .health import REGISTRY, DrafterHealthRegistry, HealthPolicy, display_url

if TYPE_CHECKING:
    from ..hookspecs import Register

log = logging.getLogger("specguard.drafters.remote")

#: an answer larger than this is a failure (a hostile drafter cannot make the verifier buffer more)
MAX_RESPONSE_BYTES = 1 << 20
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_REMOTE_OPTIONS = ("drafter_url", "policy", "fallback", "drafter_api_key")
#: bearer key for a drafting server started with --api-key (also the `drafter_api_key` option)
API_KEY_ENV = "SPECGUARD_DRAFTER_API_KEY"
#: the longest draft this client ever asks a drafting server for (engine drafters behind
#: draft-serve, e.g. llamacpp, propose up to 32); the server's advertised max_draft lowers it
REMOTE_MAX_DRAFT = 32
#: what a server that advertises nothing (protocol v1 before max_draft) is asked for
LEGACY_MAX_DRAFT = 12


class DrafterProtocolError(RequestError):
    """A remote drafter's answer broke the protocol (never leaves RemoteDrafter.propose)."""


class _SessionGone(Exception):
    """The drafting server forgot our session (404) or disagrees about its context (409)."""


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class RemoteDrafter(Drafter):
    """Client of a drafting server; falls back to a local drafter whenever the remote fails."""

    name = "remote"
    trusted = False
    #: the engine's adaptive draft length may grow to this; each request to the server asks for
    #: at most min(this, the server's advertised max_draft) tokens
    max_draft = REMOTE_MAX_DRAFT

    def __init__(
        self,
        url: str,
        *,
        fallback: Drafter | None = None,
        health: HealthPolicy | None = None,
        registry: DrafterHealthRegistry | None = None,
        api_key: str | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except Exception as exc:
            raise UsageError("invalid drafter URL", field="drafter_url", got=url) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UsageError("the drafter URL must be http(s)://host[:port]", field="drafter_url", got=url, expected="http://host:port")
        self.url = url.rstrip("/")
        self.fallback = fallback or NoDrafter()
        self.health = health or HealthPolicy()
        self.registry = registry or REGISTRY
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client | None = None
        self._session: str | None = None
        self._sent: list[int] = []
        self._params: dict[str, Any] = {}
        self._source: str | None = None
        self._remote_count = 0
        #: min(the server's advertised max_draft, REMOTE_MAX_DRAFT), learnt at session creation
        self.remote_max_draft = LEGACY_MAX_DRAFT
        self.stats: dict[str, Any] = {"remote_steps": 0, "fallback_steps": 0, "failures": 0, "last_error": None}

    # -- Drafter interface -------------------------------------------------------------------

    def start(self, prompt_ids: list[int], params: SamplingParams) -> None:
        # what the drafter may know about decoding: never the seed (it would let an untrusted
        # party predict sampled outputs), never the stop strings
        self._params = {
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "top_k": int(params.top_k),
            "max_tokens": int(params.max_tokens),
        }
        self._session = None
        self._sent = []
        self._source = None
        # a small bounded pool; every exchange ends by its step's deadline (specguard.web.http)
        self._client = http.client(timeouts=http.Timeouts.of(self.health.timeout_seconds), max_connections=2,
                                   headers=self._headers, cacert=http.cacert_for(self.url))
        self.fallback.start(prompt_ids, params)

    def propose(self, context: list[int], k: int) -> Proposal:
        self._source = None
        if k <= 0:
            return Proposal([])
        if self._client is None or not self.registry.available(self.url):
            return self._fallback(context, k)
        try:
            # one hard deadline for the whole step (session re-creation included): the drafter
            # can make a step slower by at most timeout_seconds, never stall it
            with http.deadline(self.health.timeout_seconds):
                tokens = self._remote_propose(context, k)
        except Exception as exc:  # anything the remote does wrong costs one step's draft only
            error = f"{type(exc).__name__}: {exc}"[:300]
            self.stats["failures"] += 1
            self.stats["last_error"] = error
            self._session = None
            self.registry.record_failure(self.url, error, self.health)
            log.info("remote drafter %s failed: %s", display_url(self.url), error)
            return self._fallback(context, k)
        self.registry.record_success(self.url)
        self.stats["remote_steps"] += 1
        self._source = "remote"
        self._remote_count = len(tokens) if isinstance(tokens, list) else 1
        # the tokens go to the engine as received (it validates and counts bad proposals);
        # probabilities are never forwarded
        return Proposal(tokens)

    def observe(self, drafted: int, accepted: int) -> None:
        if self._source == "remote":
            # a proposal the engine rejected arrives as drafted=0: judge what the remote sent
            self.registry.record_step(self.url, self._remote_count, accepted if drafted else 0, self.health)
        elif self._source == "fallback":
            self.fallback.observe(drafted, accepted)

    def finish(self) -> None:
        client, session = self._client, self._session
        self._client, self._session = None, None
        try:
            if client is not None and session is not None and self.registry.available(self.url):
                http.request(client, "DELETE", f"{self.url}/v1/draft/sessions/{session}",
                             timeout=min(self.health.timeout_seconds, 0.5), max_bytes=4096)
        except Exception:  # the server expires idle sessions anyway
            pass
        finally:
            if client is not None:
                client.close()
            self.fallback.finish()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "trusted": self.trusted, "url": display_url(self.url), "fallback": self.fallback.name, **self.stats}

    # -- protocol ------------------------------------------------------------------------------

    def _fallback(self, context: list[int], k: int) -> Proposal:
        self.stats["fallback_steps"] += 1
        self._source = "fallback"
        proposal = self.fallback.propose(context, min(k, int(getattr(self.fallback, "max_draft", k))))
        return Proposal(proposal.tokens)

    def _remote_propose(self, context: list[int], k: int) -> Any:
        if self._session is None:
            self._create(context)
        common = _common_prefix(self._sent, context)
        body = {"append": context[common:], "rollback_to": common, "k": min(k, self.remote_max_draft)}
        try:
            data = self._post(f"/v1/draft/sessions/{self._session}/propose", body)
        except _SessionGone:
            self._create(context)
            data = self._post(f"/v1/draft/sessions/{self._session}/propose",
                              {"append": [], "rollback_to": len(context), "k": min(k, self.remote_max_draft)})
        self._sent = list(context)
        if not isinstance(data, dict) or "tokens" not in data:
            raise DrafterProtocolError("answer has no tokens", field="tokens", got=type(data).__name__, expected='{"tokens": [int]}')
        return data["tokens"]

    def _create(self, context: list[int]) -> None:
        self._session = None
        data = self._post("/v1/draft/sessions", {"prompt_ids": list(context), "params": self._params})
        sid = data.get("session") if isinstance(data, dict) else None
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise DrafterProtocolError("invalid session id", field="session", got=repr(sid)[:80], expected="[A-Za-z0-9_-]{1,128}")
        self.remote_max_draft = _advertised_max_draft(data)
        self._session = sid
        self._sent = list(context)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON; return the decoded answer. Bounded by the step's deadline and MAX_RESPONSE_BYTES."""
        if self._client is None:
            raise DrafterProtocolError("no request in progress (start() was not called)")
        response = http.request(self._client, "POST", self.url + path, json=body,
                                timeout=self.health.timeout_seconds, max_bytes=MAX_RESPONSE_BYTES)
        if response.status_code in (404, 409) and "/propose" in path:
            raise _SessionGone()
        if response.status_code != 200:
            raise DrafterProtocolError("drafting server answered an HTTP error", field="status",
                                       got=response.status_code, expected=200)
        return response.json()


def _advertised_max_draft(data: dict[str, Any]) -> int:
    """The server's advertised max_draft, capped at REMOTE_MAX_DRAFT (an untrusted server cannot make
    the verifier run longer drafts than the client allows); absent: LEGACY_MAX_DRAFT."""
    value = data.get("max_draft", LEGACY_MAX_DRAFT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DrafterProtocolError("invalid max_draft", field="max_draft", got=repr(value)[:80],
                                   expected=f"an integer >= 1 (capped at {REMOTE_MAX_DRAFT})")
    return min(value, REMOTE_MAX_DRAFT)


def _remote(target: Any, options: dict[str, Any]) -> Drafter:
    from ..engine.factory import make_drafter

    url = options.get("drafter_url")
    if not url:
        raise UsageError("the remote drafter needs --drafter-url URL", field="drafter_url")
    fallback_name = options.get("fallback") or "ngram"
    if fallback_name == "remote":
        raise UsageError("the remote drafter's fallback must be a local drafter", field="fallback", got=fallback_name)
    health = HealthPolicy.from_policy(options.get("policy"))
    local_options = {k: v for k, v in options.items() if k not in _REMOTE_OPTIONS}
    fallback = make_drafter(str(fallback_name), target, local_options)
    api_key = options.get("drafter_api_key") or os.environ.get(API_KEY_ENV) or None
    return RemoteDrafter(str(url), fallback=fallback, health=health, api_key=api_key)


@hookimpl
def register_drafters(register: Register) -> None:
    register("remote", _remote, "an untrusted drafting server (--drafter-url); local fallback when it fails")
