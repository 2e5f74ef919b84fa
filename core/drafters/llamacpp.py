"""The `llamacpp` drafter: llama.cpp (llama-cpp-python) running a GGUF of the target proposes long drafts.

llama.cpp runs SmolLM2-135M's Q4_1 GGUF several times faster than the fp32 torch target on a CPU
core, and its greedy tokens agree with the target's on most positions, so it makes a good drafter.
It is **untrusted**: its kernels are a different implementation (4-bit weights), its
probabilities are never read, and every token it proposes is checked by the target's own
verification forward. Whatever it proposes, the output is the target's.

Per drafter (one per request), a KV *sequence* of a pooled llama.cpp context keeps its cache across
steps: each `propose` reuses the longest common prefix of what the sequence holds and the verifier's
current context (the rest of the sequence is removed, which also re-syncs after a rejection) and
evaluates only the new tokens. The GGUF is loaded once per process and contexts are pooled
(specguard.drafters.llamacpp_batch.DRAFT_POOL): a request leases a sequence at `start()` and gives it
back, cleared, at `finish()`; under batching the scheduler drafts every request of one context together.

Options (`make_drafter("llamacpp", target, options)`, or the policy's `[drafter]` table):
`gguf` (path; default: the target's own GGUF, e.g. the default model's), `n_threads` (1),
`n_ctx` (KV cells per request: min(target context, 2048)), `max_draft` (32), `confidence` (0.0: stop a draft when
llama.cpp's top probability falls below it), `share_seed` (false: see below), and the
draft-ahead options (`draft_ahead`: on by default with 2+ CPUs, see `default_draft_ahead`;
specguard.drafters.ahead).

Sampled requests: with `share_seed = true` the drafter drafts with specguard's own Gumbel-max
noise for the request's seed (specguard.engine.sampling applied to llama.cpp's logits), so its
proposals match the target's sampled choices about as often as greedy ones. The seed reveals
future samples (never integrity), so sharing it is a policy choice and off by default; without it
the drafter proposes its own argmax for sampled requests too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..llamacpp_runtime import INSTALL_HINT, checked_gguf, llama_cpp_module, target_gguf
from ..llamacpp_runtime import int_option as _int_option
from ..models import LoadedModel
from ..transcript import SamplingParams
from .ahead import with_draft_ahead
from .base import Drafter, Proposal
from .llamacpp_batch import DRAFT_POOL, DraftingPool, Lease

log = logging.getLogger("specguard.drafters.llamacpp")

__all__ = ["DRAFT_POOL", "INSTALL_HINT", "LlamaCppDrafter", "build", "llama_cpp_module", "target_gguf"]

DEFAULT_MAX_DRAFT = 32
#: KV cells per request (a sequence of a pooled context: SEQS_PER_CONTEXT of them per context)
DEFAULT_MAX_CTX = 2048
#: under batching, drafts stay at least this long whatever the row cap (most of them are accepted)
BATCH_MIN_DRAFT = 4


class LlamaCppDrafter(Drafter):
    """Greedy (or shared-seed Gumbel-max) drafts from llama.cpp, through a pooled KV sequence kept across steps."""

    name = "llamacpp"
    trusted = False
    max_draft = DEFAULT_MAX_DRAFT
    batch_min_draft = BATCH_MIN_DRAFT

    def __init__(
        self,
        gguf: str | Path,
        *,
        n_threads: int = 1,
        n_ctx: int = DEFAULT_MAX_CTX,
        max_draft: int = DEFAULT_MAX_DRAFT,
        confidence: float = 0.0,
        share_seed: bool = False,
        pool: DraftingPool | None = None,
    ) -> None:
        self.gguf = str(gguf)
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.max_draft = max_draft
        self.confidence = confidence
        self.share_seed = share_seed
        self._pool = pool or DRAFT_POOL
        self._lease: Lease | None = None
        self._params: SamplingParams | None = None
        self._prompt_len = 0
        self.counters = {"proposals": 0, "drafted": 0, "evaluated": 0, "reused": 0, "accepted": 0}

    # -- Drafter interface ---------------------------------------------------------------

    def start(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self._params = params
        self._prompt_len = len(prompt_ids)
        if self._lease is None:
            self._lease = self._pool.lease(self.gguf, self.n_threads, self.n_ctx)

    def propose(self, context: list[int], k: int) -> Proposal:
        return self.propose_until(context, k, None)

    def propose_until(self, context: list[int], k: int, keep_going: Callable[[list[int]], bool] | None) -> Proposal:
        """`propose`, stopping early (with the tokens drafted so far) once `keep_going(drafted)` is
        False; draft-ahead (specguard.drafters.ahead) uses it to stop a background block."""
        if k <= 0 or not context:
            return Proposal([])
        if self._lease is None:  # used without start(): draft greedily
            self.start(list(context), SamplingParams())
        assert self._lease is not None
        drafting, seq = self._lease.drafting, self._lease.seq
        sampled = self._shares_seed()
        start = len(context) - self._prompt_len

        def next_token(logits: np.ndarray, drafted: list[int]) -> tuple[int, bool]:
            token = self._choose(logits, start + len(drafted)) if sampled else int(np.argmax(logits))
            if self.confidence > 0 and _top_probability(logits, token) < self.confidence:
                return token, False
            return token, keep_going is None or keep_going([*drafted, token])

        before = dict(drafting.counters)
        drafted = drafting.draft(seq, list(context), k, next_token)
        self.counters["proposals"] += 1
        self.counters["evaluated"] += drafting.counters["evaluated"] - before["evaluated"]
        self.counters["reused"] += drafting.counters["reused"] - before["reused"]
        self.counters["drafted"] += len(drafted)
        return Proposal(drafted)

    def observe(self, drafted: int, accepted: int) -> None:
        self.counters["accepted"] += accepted

    def finish(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._pool.give_back(lease)

    def shared_lease(self) -> Lease | None:
        """Greedy drafts can be made for every request of a batch whose sequence lives in the same pooled
        context at once (specguard.engine.batching); shared-seed sampled drafts cannot."""
        if self._shares_seed():
            return None
        return self._lease

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "trusted": self.trusted, "gguf": Path(self.gguf).name, "n_threads": self.n_threads,
            "max_draft": self.max_draft, "share_seed": self.share_seed, **self.counters,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _shares_seed(self) -> bool:
        p = self._params
        return bool(self.share_seed and p is not None and not p.greedy and p.seed is not None)

    def _choose(self, logits: np.ndarray, position: int) -> int:
        """The target's sampling rule (Gumbel-max with the request's seed) on llama.cpp's logits."""
        import torch

        from ..engine.sampling import decision_scores

        assert self._params is not None
        row = torch.from_numpy(np.array(logits, dtype=np.float32))[None]
        return int(torch.argmax(decision_scores(row, self._params, [position])[0]))


def _top_probability(logits: np.ndarray, token: int) -> float:
    shifted = logits.astype(np.float64) - float(logits[token])
    return float(1.0 / np.exp(shifted).sum())


def build(target: LoadedModel, options: dict[str, Any]) -> Drafter:
    """The `llamacpp` drafter factory: check the package and the GGUF now, load lazily per request."""
    llama_cpp_module()
    ref = options.get("gguf")
    if ref is None:
        draft = options.get("draft_model")
        if isinstance(draft, LoadedModel):
            path = target_gguf(draft)
        elif isinstance(draft, str | Path) and str(draft).endswith(".gguf"):
            path = Path(draft)
        else:
            path = target_gguf(target)
    else:
        path = Path(str(ref)).expanduser()
    path = checked_gguf(path, target, "llamacpp drafter", "set the drafter option gguf = PATH (policy [drafter] table)")
    n_threads = _int_option(options, "n_threads", 1, 1, 1024)
    n_ctx = _int_option(options, "n_ctx", min(target.max_context, DEFAULT_MAX_CTX), 16, 1 << 20)
    max_draft = _int_option(options, "max_draft", DEFAULT_MAX_DRAFT, 1, 64)
    try:
        confidence = float(options.get("confidence") or 0.0)
    except (TypeError, ValueError) as exc:
        raise UsageError("confidence must be a number", field="confidence", got=options.get("confidence")) from exc
    if not 0.0 <= confidence < 1.0:
        raise UsageError("confidence out of range", field="confidence", got=confidence, expected="0 <= c < 1")
    share = options.get("share_seed", False)
    if not isinstance(share, bool):
        raise UsageError("share_seed must be true or false", field="share_seed", got=share)
    drafter = LlamaCppDrafter(path, n_threads=n_threads, n_ctx=n_ctx, max_draft=max_draft, confidence=confidence,
                              share_seed=share)
    return with_draft_ahead(drafter, {"draft_ahead": default_draft_ahead(), **options})


def default_draft_ahead() -> bool:
    """Draft-ahead is on by default where the drafter's thread can run beside the target's (2+ CPUs).

    Measured on 2 cores (docs/benchmarks.md, issue 12): 3.1x transformers plain with draft-ahead
    against 1.9x without; on one CPU the background thread would only take the target's time.
    """
    from ..defaults import available_cpus

    return available_cpus() >= 2
