"""A serving node: the target model, its drafter configuration, identity key, receipts and limits.

One `Node` backs one `specguard serve` process. Each request gets its own drafter (and, outside
batching, its own engine: `Node.make_engine()`), because engines and drafters keep per-request
state and are not thread-safe. `ConcurrencyLimiter` bounds how many requests generate at once
(`max_concurrency`) and how many may wait (`max_queue`); beyond that the server answers 429.

With the built-in engine (`engine_name="specguard"`) and `batching=True` (the default), the
running requests share one `BatchScheduler` (specguard.engine.batching): one thread owns the
target model and runs one batched forward per iteration over every running request
(`max_concurrency` is the batch size, default 8 from the CLI). Other engines, or
`batching=False`, run each request's engine in its own worker thread (default 1 at a time).

`Node` is a `specguard.context.NodeContext` (frozen fields hooks read: `model`, `policy`, `home`,
`node_key`, `role`, `served_model_name`, `consensus`, `receipts`, `responses`, `metrics`), plus
what serving needs: `limiter`, `generator` (`specguard.generator`: batched or threaded, chosen
here once), `drafter_name`, `drafter_options`. Plugins read the context and never attach attributes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .context import ROLES, NodeContext, consensus_args
from .engine.interface import Engine
from .errors import ConfigError, UsageError
from .generator import BatchedGenerator, Generator, ThreadedGenerator
from .models import LoadedModel
from .server.errors import QueueFullError
from .server.metrics import ServerMetrics

log = logging.getLogger("specguard.node")

__all__ = ["ROLES", "ConcurrencyLimiter", "Node", "ResponseStore", "build_node"]


class ConcurrencyLimiter:
    """At most `max_concurrency` holders; at most `max_queue` waiters; the rest get QueueFullError."""

    def __init__(self, max_concurrency: int = 1, max_queue: int = 8, metrics: ServerMetrics | None = None) -> None:
        if max_concurrency < 1:
            raise UsageError("max concurrency must be at least 1", field="--max-concurrency", got=max_concurrency)
        if max_queue < 0:
            raise UsageError("max queue must be non-negative", field="--max-queue", got=max_queue)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._metrics = metrics

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._semaphore

    def _gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.running.set(self.running)
            self._metrics.waiting.set(self.waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room; raise QueueFullError otherwise."""
        sem = self._sem()
        if self.running >= self.max_concurrency and self.waiting >= self.max_queue:
            raise QueueFullError(
                "server is busy: all generation slots are taken and the queue is full; retry later",
                field="queue", got=f"{self.running} running, {self.waiting} waiting",
                expected=f"at most {self.max_concurrency} running + {self.max_queue} waiting")
        self.waiting += 1
        self._gauges()
        try:
            await sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self._gauges()

    def release(self) -> None:
        self.running -= 1
        self._sem().release()
        self._gauges()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class ResponseStore:
    """The exact response bodies receipts were issued for, by receipt id (for streamed responses,
    whose client never sees the assembled body), readable only by whoever made the request.

    Each body is stored with the SHA-256 of a per-response secret (`new_token()`, 32 random
    bytes) that only the requester received; `get` needs that secret and compares digests in
    constant time. Files live under `home`/responses/ (folders 0700, files 0600), written
    atomically. Bodies stored without a token digest (older versions) are never served.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    @staticmethod
    def new_token() -> str:
        """A fresh per-response secret: 32 random bytes, URL-safe base64."""
        return secrets.token_urlsafe(32)

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def _path(self, receipt_id: str) -> Path | None:
        if not isinstance(receipt_id, str) or not re.fullmatch(r"[0-9a-f]{32}", receipt_id):
            return None
        return self.root / receipt_id[:2] / f"{receipt_id}.json"

    def put(self, receipt_id: str, response_obj: dict[str, Any], token: str) -> None:
        """Store `response_obj` readable with `token` only."""
        path = self._path(receipt_id)
        if path is None:
            raise ValueError(f"bad receipt id {receipt_id!r}")
        if not isinstance(token, str) or len(token) < 32:
            raise ValueError("a response token must be at least 32 characters")
        path.parent.mkdir(exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        data = json.dumps({"token_sha256": self._digest(token), "response": response_obj}, ensure_ascii=False)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def get(self, receipt_id: str, token: str | None) -> dict[str, Any] | None:
        """The stored body if `token` is its secret; None for an unknown id or a wrong/missing token
        (the same answer, so a reader without the secret learns nothing)."""
        path = self._path(receipt_id)
        if path is None or not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        want = doc.get("token_sha256") if isinstance(doc, dict) else None
        if not isinstance(want, str) or not isinstance(token, str):
            return None
        if not hmac.compare_digest(self._digest(token).encode(), want.encode()):
            return None
        body = doc.get("response")
        return body if isinstance(body, dict) else None


class Node(NodeContext):
    """Everything one serving process needs to answer and receipt requests: a `NodeContext` (what
    hooks read; those fields are frozen) plus admission (`limiter`), engine and drafter settings
    and the request `generator`."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        drafter: str = "ngram",
        drafter_options: dict[str, Any] | None = None,
        policy: Any = None,
        home: Path | None = None,
        max_concurrency: int | None = 1,
        max_queue: int = 8,
        role: str = "serve",
        verifiers: list[str] | tuple[str, ...] = (),
        quorum: int | None = None,
        verifier_keys: list[bytes] | tuple[bytes, ...] = (),
        served_model_name: str | None = None,
        default_max_tokens: int = 256,
        max_model_len: int | None = None,
        engine_name: str = "specguard",
        engine_options: dict[str, Any] | None = None,
        receipts: Any = None,
        responses: ResponseStore | None = None,
        max_prompt_chars: int | None = None,
        batching: bool = True,
        max_batch_rows: int | None = None,
    ) -> None:
        from .attest.receipts import ReceiptIssuer
        from .engine.factory import make_drafter, make_engine
        from .keys import home_dir, load_or_create_node_key
        from .policies import load_policy

        if role not in ROLES:
            raise UsageError("unknown role", field="--role", got=role, expected=ROLES)
        if quorum is not None and (quorum < 1 or (verifiers and quorum > len(verifiers))):
            raise UsageError("quorum must be between 1 and the number of verifiers", field="--quorum", got=quorum,
                             expected=f"1..{len(verifiers)}")
        if max_model_len is not None and max_model_len < 2:
            raise UsageError("max model length must be at least 2 tokens", field="--max-model-len", got=max_model_len)
        if default_max_tokens < 1:
            raise UsageError("default max tokens must be positive", field="default_max_tokens", got=default_max_tokens)
        if max_prompt_chars is not None and max_prompt_chars < 1:
            raise UsageError("max prompt characters must be positive", field="max_prompt_chars",
                             got=max_prompt_chars)
        home = Path(home) if home is not None else home_dir()
        home.mkdir(parents=True, exist_ok=True)
        node_key = load_or_create_node_key(home)
        # services are built here (or passed in) and handed to plugins through the NodeContext
        super().__init__(
            model=model, policy=policy if policy is not None else load_policy("dev"), home=home, node_key=node_key,
            role=role, served_model_name=served_model_name or model.name,
            consensus=consensus_args({"verifiers": verifiers, "quorum": quorum, "verifier_keys": verifier_keys}),
            receipts=receipts if receipts is not None else ReceiptIssuer(home, node_key),
            responses=responses if responses is not None else ResponseStore(home / "responses"),
            metrics=ServerMetrics())
        self.drafter_name = drafter
        self.drafter_options = self._drafter_options(drafter_options or {})
        self.engine_name = engine_name
        self.engine_options = {k: v for k, v in (engine_options or {}).items() if v is not None}
        self.default_max_tokens = default_max_tokens
        #: the context length requests are validated against (the model's, or less with --max-model-len)
        self.max_context = min(model.max_context, max_model_len or model.max_context)
        #: prompts longer than this (characters of all message contents, or token ids) are refused
        #: before tokenizing: a token is rarely longer than 16 characters, so 16 per context slot
        self.max_prompt_chars = max_prompt_chars or max(4096, 16 * self.max_context)
        # the batch scheduler builds its tensors on the CPU: a model on another device runs per request
        batched = batching and engine_name in ("specguard", "builtin") and model.device == "cpu"
        if batched and max_concurrency is None:
            from .engine.batching import DEFAULT_MAX_BATCH

            max_concurrency = DEFAULT_MAX_BATCH
        self.limiter = ConcurrencyLimiter(1 if max_concurrency is None else max_concurrency, max_queue, self.metrics)
        #: how requests run, chosen once: the built-in engine's continuous batching, else a thread per request
        self.generator: Generator = (self._batched(self.limiter.max_concurrency, max_batch_rows) if batched
                                     else ThreadedGenerator(self.make_engine))
        # build one drafter now so a bad drafter name or option fails at start, not per request
        probe = make_drafter(drafter, model, self.drafter_options)
        self.drafter_trusted = bool(probe.trusted)
        # and one engine: an unknown engine name (UsageError listing the names) or a bad option fails at start
        self.engine_capabilities = make_engine(model, probe, engine_name, self.engine_options).capabilities

    def _batched(self, max_batch: int, max_batch_rows: int | None) -> Generator:
        from .engine.batching import DEFAULT_MAX_ROWS, BatchScheduler

        rows = DEFAULT_MAX_ROWS if max_batch_rows is None else max_batch_rows
        if rows < 0:
            raise UsageError("max batch rows must be 0 (no cap) or positive", field="--max-batch-rows", got=rows)
        return BatchedGenerator(BatchScheduler(self.model, max_batch=max_batch, max_rows=rows or None),
                                self.make_drafter)

    def _drafter_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Drafter options: the policy's [drafter] table, then explicit options; a draft model is loaded once."""
        from .models import load_model

        merged: dict[str, Any] = dict(self.policy.drafter.options)
        merged.update({k: v for k, v in options.items() if v is not None})
        if "url" in merged and "drafter_url" not in merged:
            merged["drafter_url"] = merged["url"]
        if "drafter_url" in merged:
            merged.setdefault("url", merged["drafter_url"])
        ref = merged.get("draft_model")
        if ref is not None and not isinstance(ref, LoadedModel):
            merged["draft_model"] = load_model(str(ref))
        merged.setdefault("policy", self.policy)
        return merged

    @property
    def request_defaults(self) -> Any:
        """What this node fills in for an omitted field (signed into each receipt)."""
        from .attest.request_defaults import RequestDefaults

        return RequestDefaults(max_tokens=self.default_max_tokens, context_length=self.max_context)

    def make_drafter(self) -> Any:
        """A fresh drafter for one request."""
        from .engine.factory import make_drafter

        return make_drafter(self.drafter_name, self.model, self.drafter_options)

    def make_engine(self) -> Engine:
        """A fresh engine with a fresh drafter for one request."""
        from .engine.factory import make_engine

        return make_engine(self.model, self.make_drafter(), self.engine_name, self.engine_options)

    @property
    def hold_streams(self) -> bool:
        """True when a response may still be refused after generation (the policy's
        `[consensus] on_no_quorum` is "withhold" or "fail"): streams are then held back until
        the verdict, so no token leaves before the certificate is in."""
        return self.policy.consensus.on_no_quorum in ("withhold", "fail")

    def describe(self) -> dict[str, Any]:
        """What `specguard serve` prints at start and GET /health returns."""
        return {
            "model": self.served_model_name,
            "model_digest": self.model.digest,
            "tokenizer_digest": self.model.tokenizer_digest,
            "max_context": self.max_context,
            "drafter": self.drafter_name,
            "engine": {"name": self.engine_name, "version": self.engine_capabilities.version},
            "runtime": {"name": self.model.runtime, "dtype": self.model.dtype, "device": self.model.device},
            "key_id": self.key_id,
            "public_key": self.public_key_bytes.hex(),
            "policy": {"name": self.policy.name, "digest": self.policy.digest, "insecure": self.policy.insecure},
            "role": self.role,
            "log_origin": getattr(self.receipts, "origin", None),
            "max_concurrency": self.limiter.max_concurrency,
            "max_queue": self.limiter.max_queue,
            "batching": self.generator.batching,
        }

    def close(self) -> None:
        self.generator.close()
        if self.receipts is not None and hasattr(self.receipts, "close"):
            self.receipts.close()


def build_node(
    model_ref: str | None = None,
    *,
    drafter: str = "ngram",
    draft_model: str | None = None,
    drafter_url: str | None = None,
    exit_layer: int | None = None,
    policy: str | None = None,
    drafter_api_key: str | None = None,
    drafter_options: dict[str, Any] | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    **kwargs: Any,
) -> Node:
    """Load the model and policy named on the command line and build a Node."""
    from .engine.factory import check_engine_name, runtime_for_engine
    from .models import load_model
    from .policies import load_policy

    if drafter == "remote" and not drafter_url:
        raise ConfigError("--drafter remote needs --drafter-url URL", field="--drafter-url")
    engine_name = kwargs.get("engine_name", "specguard")
    check_engine_name(engine_name)  # before the model loads
    pol = load_policy(policy or "dev")
    target = load_model(model_ref, runtime=runtime_for_engine(engine_name), dtype=dtype, device=device)
    options = {"draft_model": draft_model, "exit_layer": exit_layer, "url": drafter_url,
               "drafter_api_key": drafter_api_key, **(drafter_options or {})}
    return Node(target, drafter=drafter, drafter_options=options, policy=pol, **kwargs)
