"""The `llamacpp` drafter: llama.cpp (llama-cpp-python) running a GGUF of the target proposes long drafts.

llama.cpp runs SmolLM2-135M's Q4_1 GGUF several times faster than the fp32 torch target on a CPU
core, and its greedy tokens agree with the target's on most positions, so it makes a good drafter.
It is **untrusted**: its kernels are a different implementation (4-bit weights), its
probabilities are never read, and every token it proposes is checked by the target's own
verification forward. Whatever it proposes, the output is the target's.

Per drafter (one per request), the llama.cpp context keeps its KV cache across steps: each
`propose` reuses the longest common prefix of what the context holds and the verifier's
current context (`Llama.n_tokens` is truncated to it, which also re-syncs after a rejection) and
evaluates only the new tokens. Llama objects are pooled per (GGUF, threads, n_ctx), so a server
does not reload the file for every request; one object serves one request at a time.

Options (`make_drafter("llamacpp", target, options)`, or the policy's `[drafter]` table):
`gguf` (path; default: the target's own GGUF, e.g. the default model's), `n_threads` (1),
`n_ctx` (min(target context, 4096)), `max_draft` (32), `confidence` (0.0: stop a draft when
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
from ..llamacpp_runtime import INSTALL_HINT, POOL, LlamaPool, checked_gguf, llama_cpp_module, target_gguf
from ..llamacpp_runtime import int_option as _int_option
from ..models import LoadedModel
from ..transcript import SamplingParams
from .ahead import with_draft_ahead
from .base import Drafter, Proposal

log = logging.getLogger("specguard.drafters.llamacpp")

__all__ = ["INSTALL_HINT", "POOL", "LlamaCppDrafter", "build", "llama_cpp_module", "target_gguf"]

DEFAULT_MAX_DRAFT = 32
DEFAULT_MAX_CTX = 4096
#: under batching, drafts stay at least this long whatever the row cap (most of them are accepted)
BATCH_MIN_DRAFT = 4
#: KV cells per request of the batch's shared drafting context (longer contexts draft alone)
SHARED_MAX_CTX = 2048


class LlamaCppDrafter(Drafter):
    """Greedy (or shared-seed Gumbel-max) drafts from llama.cpp, with its KV cache kept across steps."""

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
        pool: LlamaPool | None = None,
    ) -> None:
        self.gguf = str(gguf)
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.max_draft = max_draft
        self.confidence = confidence
        self.share_seed = share_seed
        self._pool = pool or POOL
        self._llama: Any = None
        self._params: SamplingParams | None = None
        self._prompt_len = 0
        self.counters = {"proposals": 0, "drafted": 0, "evaluated": 0, "reused": 0, "accepted": 0}

    # -- Drafter interface ---------------------------------------------------------------

    def start(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self._params = params
        self._prompt_len = len(prompt_ids)
        if self._llama is None:
            self._llama = self._pool.acquire(self.gguf, self.n_threads, self.n_ctx)

    def propose(self, context: list[int], k: int) -> Proposal:
        return self.propose_until(context, k, None)

    def propose_until(self, context: list[int], k: int, keep_going: Callable[[list[int]], bool] | None) -> Proposal:
        """`propose`, stopping early (with the tokens drafted so far) once `keep_going(drafted)` is
        False; draft-ahead (specguard.drafters.ahead) uses it to stop a background block."""
        if k <= 0 or not context:
            return Proposal([])
        if self._llama is None:  # used without start(): draft greedily
            self.start(list(context), SamplingParams())
        llama = self._llama
        vocab = int(llama.n_vocab())
        # context + k - 1 drafted tokens are evaluated; keep them inside llama.cpp's context
        k = min(k, self.n_ctx - len(context))
        if k <= 0:
            return Proposal([])
        # re-sync: keep the longest common prefix of the cached tokens and the context, but always
        # evaluate at least the context's last token (its logits give the first draft token)
        cached = llama.input_ids[: llama.n_tokens]
        n = min(len(cached), len(context) - 1)
        mismatch = np.flatnonzero(cached[:n] != np.asarray(context[:n], dtype=cached.dtype))
        common = int(mismatch[0]) if mismatch.size else n
        llama.n_tokens = common
        self.counters["reused"] += common
        self.counters["proposals"] += 1
        pending = [int(t) for t in context[common:]]
        if any(not 0 <= t < vocab for t in pending):
            return Proposal([])  # a target with a larger vocabulary than the GGUF: llama.cpp would abort
        drafted: list[int] = []
        sampled = self._shares_seed()
        while True:
            llama.eval(pending)
            self.counters["evaluated"] += len(pending)
            logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,))
            position = len(context) + len(drafted) - self._prompt_len
            token = self._choose(logits, position) if sampled else int(np.argmax(logits))
            drafted.append(token)
            if len(drafted) >= k or (self.confidence > 0 and _top_probability(logits, token) < self.confidence):
                break
            if keep_going is not None and not keep_going(drafted):
                break
            pending = [token]
        self.counters["drafted"] += len(drafted)
        return Proposal(drafted)

    def observe(self, drafted: int, accepted: int) -> None:
        self.counters["accepted"] += accepted

    def finish(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            self._pool.release(self.gguf, self.n_threads, self.n_ctx, llama)

    def shared_drafting_key(self) -> tuple[Any, ...] | None:
        """Greedy drafts of one GGUF can be drafted for a whole batch at once (specguard.drafters.llamacpp_batch);
        shared-seed sampled drafts cannot."""
        if self._shares_seed():
            return None
        return ("llamacpp", self.gguf, self.n_threads, min(self.n_ctx, SHARED_MAX_CTX))

    def make_shared_drafting(self, n_seqs: int) -> Any:
        from .llamacpp_batch import SharedLlamaDrafting

        return SharedLlamaDrafting(self.gguf, n_seqs=n_seqs, n_ctx_seq=min(self.n_ctx, SHARED_MAX_CTX),
                                   n_threads=self.n_threads)

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
