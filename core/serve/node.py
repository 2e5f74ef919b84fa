"""A serving node: the target model, its drafter and engine settings, identity key, receipts and limits.

One `Node` backs one `specguard serve` process, built from a `ServeConfig`. Each request gets its
own drafter (and, outside batching, its own engine: `Node.make_engine()`), because engines and
drafters keep per-request state and are not thread-safe. `ConcurrencyLimiter`
(specguard.serve.admission) bounds how many requests generate at once and how many may wait.

With the built-in engine and `batching` (the default), the running requests share one
`BatchScheduler` (specguard.engine.batching) through a `BatchedGenerator`; other engines, or
`batching=False`, run each request's engine in its own worker thread (`ThreadedGenerator`). The
choice is made once, here (specguard.serve.generator).

`Node` is a `specguard.context.NodeContext` (the frozen fields hooks read) plus what serving
needs: `config`, `limiter`, `generator`, the drafter and engine settings. Plugins read the
context and never attach attributes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..attest.receipts import ReceiptIssuer
from ..attest.request_defaults import RequestDefaults
from ..context import NodeContext, consensus_args
from ..drafters.base import Drafter
from ..engine.factory import check_engine_name, make_drafter, make_engine, runtime_for_engine
from ..engine.interface import Engine
from ..keys import home_dir, load_or_create_node_key
from ..models import LoadedModel, load_model
from ..policies import Policy, load_policy
from ..web.metrics import ServerMetrics
from .admission import ConcurrencyLimiter
from .config import ServeConfig
from .generator import BatchedGenerator, Generator, ThreadedGenerator
from .responses import ResponseStore

log = logging.getLogger("specguard.node")

__all__ = ["Node", "build_node"]


def _drafter_options(config: ServeConfig, policy: Policy) -> dict[str, Any]:
    """Drafter options: the policy's [drafter] table, then the config's; a draft model is loaded once."""
    merged: dict[str, Any] = dict(policy.drafter.options)
    explicit = {"draft_model": config.draft_model, "exit_layer": config.exit_layer, "url": config.drafter_url,
                "drafter_api_key": config.drafter_api_key, **config.drafter_options}
    merged.update({k: v for k, v in explicit.items() if v is not None})
    if "url" in merged and "drafter_url" not in merged:
        merged["drafter_url"] = merged["url"]
    if "drafter_url" in merged:
        merged.setdefault("url", merged["drafter_url"])
    ref = merged.get("draft_model")
    if ref is not None and not isinstance(ref, LoadedModel):
        merged["draft_model"] = load_model(str(ref))
    merged.setdefault("policy", policy)
    return merged


class Node(NodeContext):
    """Everything one serving process needs to answer and receipt requests: a `NodeContext` (what
    hooks read; those fields are frozen) plus admission (`limiter`), engine and drafter settings
    and the request `generator`."""

    def __init__(self, model: LoadedModel, config: ServeConfig | None = None, *, policy: Policy | None = None,
                 receipts: ReceiptIssuer | None = None, responses: ResponseStore | None = None) -> None:
        config = config if config is not None else ServeConfig()
        home = Path(config.home) if config.home is not None else home_dir()
        home.mkdir(parents=True, exist_ok=True)
        node_key = load_or_create_node_key(home)
        max_context = min(model.max_context, config.max_model_len or model.max_context)
        # services are built here (or passed in) and handed to plugins through the NodeContext
        super().__init__(
            model=model, policy=policy if policy is not None else load_policy(config.policy_ref), home=home,
            node_key=node_key, role=config.role, served_model_name=config.served_model_name or model.name,
            consensus=consensus_args(config.consensus_args()),
            receipts=receipts if receipts is not None else ReceiptIssuer(home, node_key),
            responses=responses if responses is not None else ResponseStore(home / "responses"),
            metrics=ServerMetrics(),
            request_defaults=RequestDefaults(max_tokens=config.default_max_tokens, context_length=max_context))
        self.config = config
        self.drafter_name = config.drafter or "ngram"
        self.drafter_options = _drafter_options(config, self.policy)
        self.engine_name = config.engine
        self.engine_options = dict(config.engine_options)
        self.default_max_tokens = config.default_max_tokens
        #: the context length requests are validated against (the model's, or less with --max-model-len)
        self.max_context = max_context
        #: prompts longer than this (characters of all message contents, or token ids) are refused
        #: before tokenizing: a token is rarely longer than 16 characters, so 16 per context slot
        self.max_prompt_chars = config.max_prompt_chars or max(4096, 16 * max_context)
        self.limiter, self.generator = self._admission_and_generator(config)
        # build one drafter now so a bad drafter name or option fails at start, not per request
        probe = make_drafter(self.drafter_name, model, self.drafter_options)
        self.drafter_trusted = bool(probe.trusted)
        # and one engine: an unknown engine name (UsageError listing the names) or a bad option fails at start
        self.engine_capabilities = make_engine(model, probe, self.engine_name, self.engine_options).capabilities

    def _admission_and_generator(self, config: ServeConfig) -> tuple[ConcurrencyLimiter, Generator]:
        """How requests run, chosen once: the built-in engine's continuous batching, else a thread per request.
        The batch scheduler builds its tensors on the CPU: a model on another device runs per request."""
        batched = config.batching and config.batched_engine and self.model.device == "cpu"
        if not batched:
            return ConcurrencyLimiter(config.max_concurrency or 1, config.max_queue, self.metrics), \
                ThreadedGenerator(self.make_engine)
        from ..engine.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_ROWS, BatchScheduler  # imports torch

        concurrency = config.max_concurrency or DEFAULT_MAX_BATCH
        limiter = ConcurrencyLimiter(concurrency, config.max_queue, self.metrics)
        rows = DEFAULT_MAX_ROWS if config.max_batch_rows is None else config.max_batch_rows
        scheduler = BatchScheduler(self.model, max_batch=concurrency, max_rows=rows or None)
        return limiter, BatchedGenerator(scheduler, self.make_drafter)

    def make_drafter(self) -> Drafter:
        """A fresh drafter for one request."""
        return make_drafter(self.drafter_name, self.model, self.drafter_options)

    def make_engine(self) -> Engine:
        """A fresh engine with a fresh drafter for one request."""
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
            "log_origin": self.receipts.origin if self.receipts is not None else None,
            "max_concurrency": self.limiter.max_concurrency,
            "max_queue": self.limiter.max_queue,
            "batching": self.generator.batching,
        }

    def close(self) -> None:
        self.generator.close()
        if self.receipts is not None:
            self.receipts.close()


def build_node(config: ServeConfig) -> Node:
    """Load the policy and model `config` names and build a Node (the policy first: a bad one fails fast)."""
    check_engine_name(config.engine)  # before the model loads
    policy = load_policy(config.policy_ref)
    target = load_model(config.model_ref, runtime=runtime_for_engine(config.engine), dtype=config.dtype,
                        device=config.device)
    return Node(target, config, policy=policy)
