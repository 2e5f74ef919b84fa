"""llama.cpp drafting state pooled per process: one model per GGUF, contexts with a KV sequence per request.

Every `llamacpp` drafter (one per request) drafts through a *sequence* it leases from `DRAFT_POOL`:

- the pool loads each GGUF **once per process** (`llama_model`, shared by all its contexts) and keeps
  contexts per (GGUF, threads, cells per sequence), each with `SEQS_PER_CONTEXT` KV sequences
  (`n_seq_max`, not unified: each sequence has its own cells). A request leases one sequence at
  `start()` and gives it back at `finish()` (completion, cancellation, errors), which clears its KV
  cells; a new context is created only when every sequence of the existing ones is lent, and at most
  one context per key is kept idle. No request creates a context or loads the file of its own.
- alone, a request drafts through its sequence (`SharedLlamaDrafting.draft`: re-sync to the longest
  common prefix of what the sequence holds and the verifier's context, evaluate only the new tokens,
  then draft token by token, with the drafter's own token rule and early stop);
- under continuous batching (specguard.engine.batching) the requests whose sequences live in one
  context are drafted **together** (`propose_many`): each `llama_decode` carries the next token of
  every request that still needs one. Decoding a small model is memory-bound, so drafting 8 requests
  costs about as many decodes as drafting one. It is the same sequence either way, so a prompt is
  evaluated once, whichever path drafts it first.

It is as untrusted as ever: its tokens go through each request's verification (validated, then
accepted only where they equal the target's own choice), so outputs do not depend on it. A failed
decode empties the sequences it touched and returns no drafts for that step; it never fails a
request. `LOADS` counts model loads and context creations (the seam the tests count through).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..llamacpp_runtime import llama_cpp_module

log = logging.getLogger("specguard.drafters.llamacpp_batch")

#: tokens one shared decode may carry (a new request's prompt is evaluated in chunks of this many)
DEFAULT_N_BATCH = 512
#: KV sequences (requests drafting at once) per pooled context: the batch scheduler's default batch
SEQS_PER_CONTEXT = 8
#: model loads and context creations in this process (tests count through it; never reset by the code)
LOADS = {"models": 0, "contexts": 0}

#: next_token(logits, drafted so far) -> (token, keep drafting after it)
NextToken = Callable[[np.ndarray, list[int]], tuple[int, bool]]

_backend_lock = threading.Lock()
_backend_ready = False


def _load_model(gguf: str) -> Any:
    """llama.cpp's model for `gguf` (weights memory-mapped, not repacked: see llamacpp_runtime._model_params)."""
    global _backend_ready
    llama_cpp = llama_cpp_module()
    from llama_cpp import _internals
    from llama_cpp._logger import set_verbose

    with _backend_lock:
        if not _backend_ready:
            set_verbose(False)
            llama_cpp.llama_backend_init()
            _backend_ready = True
    params = llama_cpp.llama_model_default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = False
    model = _internals.LlamaModel(path_model=gguf, params=params, verbose=False)
    LOADS["models"] += 1
    return model


class SharedLlamaDrafting:
    """A llama.cpp context with `n_seqs` KV sequences on a loaded model; drafts for one or many requests."""

    def __init__(self, model: Any, gguf: str | Path, *, n_seqs: int, n_ctx_seq: int, n_threads: int = 1,
                 n_batch: int = DEFAULT_N_BATCH) -> None:
        llama_cpp = llama_cpp_module()
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.gguf = str(gguf)
        self.n_seqs = n_seqs
        self.n_ctx_seq = n_ctx_seq
        self.n_threads = n_threads
        self.n_batch = min(n_batch, n_seqs * n_ctx_seq)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_seqs * n_ctx_seq
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_seqs
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = False
        # as llama_cpp.Llama (the per-request drafter measured before pooling): flash attention's f16
        # accumulation drafts fewer of the fp32 target's tokens
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
        LOADS["contexts"] += 1
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.vocab = int(model.n_vocab())
        self._cached: list[list[int]] = [[] for _ in range(n_seqs)]
        self._lock = threading.Lock()
        self.counters = {"calls": 0, "decodes": 0, "drafted": 0, "evaluated": 0, "reused": 0, "failures": 0}

    # -- public ----------------------------------------------------------------------------

    def propose_many(self, requests: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """Greedy drafts of up to k tokens for each (sequence, context, k), in the order given, in lockstep."""
        with self._lock:
            self.counters["calls"] += 1
            try:
                return self._propose(requests)
            except Exception as exc:  # an untrusted drafter failing costs this step's drafts only
                self._failed(exc, [seq for seq, _, _ in requests])
                return [[] for _ in requests]

    def draft(self, seq: int, context: list[int], k: int, next_token: NextToken) -> list[int]:
        """Up to k tokens continuing `context` in sequence `seq` alone: `next_token(logits, drafted)` picks
        each token and says whether to go on (the drafter's sampling rule, confidence, draft-ahead stop)."""
        with self._lock:
            self.counters["calls"] += 1
            k = min(k, self.n_ctx_seq - len(context))
            if k <= 0 or not context or not self._in_vocab(context):
                return []
            try:
                return self._draft_one(seq, [int(t) for t in context], k, next_token)
            except Exception as exc:
                self._failed(exc, [seq])
                return []

    def release(self, seq: int) -> None:
        """Clear sequence `seq` (its request is done)."""
        with self._lock:
            self._rm(seq, 0)
            self._cached[seq] = []

    def cached(self, seq: int) -> list[int]:
        """The tokens sequence `seq` holds (evaluated, in its KV cells)."""
        with self._lock:
            return list(self._cached[seq])

    def close(self) -> None:
        with self._lock:
            for obj in (self._batch, self._ctx):
                obj.close()

    def describe(self) -> dict[str, Any]:
        return {"gguf": Path(self.gguf).name, "n_seqs": self.n_seqs, "n_ctx_seq": self.n_ctx_seq, **self.counters}

    # -- drafting ----------------------------------------------------------------------------

    def _propose(self, requests: list[tuple[int, list[int], int]]) -> list[list[int]]:
        drafts: dict[int, list[int]] = {}
        want: dict[int, int] = {}
        pending: dict[int, list[int]] = {}
        for seq, context, k in requests:
            k = min(k, self.n_ctx_seq - len(context))
            if not 0 <= seq < self.n_seqs or k <= 0 or not context or seq in want or not self._in_vocab(context):
                continue
            pending[seq] = self._resync(seq, [int(t) for t in context])
            want[seq], drafts[seq] = k, []
        while pending:
            finished = self._decode_some(pending)
            for seq in finished:
                token = int(np.argmax(self._logits(finished[seq])))
                drafts[seq].append(token)
                if len(drafts[seq]) >= want[seq]:
                    del pending[seq]
                else:
                    pending[seq] = [token]
        self.counters["drafted"] += sum(len(d) for d in drafts.values())
        return [drafts.get(seq, [])[:k] if seq in want else [] for seq, _, k in requests]

    def _draft_one(self, seq: int, context: list[int], k: int, next_token: NextToken) -> list[int]:
        pending = {seq: self._resync(seq, context)}
        drafted: list[int] = []
        while True:
            finished = self._decode_some(pending)
            if seq not in finished:
                continue  # a long prompt: evaluated in chunks of n_batch
            token, go_on = next_token(self._logits(finished[seq]), drafted)
            drafted.append(int(token))
            if len(drafted) >= k or not go_on:
                break
            pending = {seq: [int(token)]}
        self.counters["drafted"] += len(drafted)
        return drafted

    def _in_vocab(self, context: list[int]) -> bool:
        """False for ids outside the GGUF's vocabulary (a larger target vocabulary): llama.cpp would abort."""
        return all(0 <= int(t) < self.vocab for t in context)

    def _resync(self, seq: int, context: list[int]) -> list[int]:
        """Keep the longest common prefix of the sequence and `context` (minus its last token); the rest is pending."""
        cached = self._cached[seq]
        n = min(len(cached), len(context) - 1)
        common = next((i for i in range(n) if cached[i] != context[i]), n)
        self._rm(seq, common)
        self._cached[seq] = cached[:common]
        self.counters["reused"] += common
        return context[common:]

    def _decode_some(self, pending: dict[int, list[int]]) -> dict[int, int]:
        """One decode over as many pending tokens as fit; {seq: batch index of its logits} for the
        sequences whose pending tokens were all evaluated (they get their next token)."""
        batch = self._batch.batch
        n = 0
        done: dict[int, int] = {}
        for seq in list(pending):
            tokens = pending[seq]
            room = self.n_batch - n
            if room <= 0:
                break
            take = tokens[:room]
            start = len(self._cached[seq])
            for i, token in enumerate(take):
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = False
                n += 1
            self._cached[seq].extend(take)
            if len(take) == len(tokens):
                batch.logits[n - 1] = True
                done[seq] = n - 1
                pending[seq] = []
            else:
                pending[seq] = tokens[len(take):]
        batch.n_tokens = n
        self._ctx.decode(self._batch)
        self.counters["decodes"] += 1
        self.counters["evaluated"] += n
        return done

    def _logits(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(self._ctx.get_logits_ith(index), shape=(self.vocab,))

    def _rm(self, seq: int, start: int) -> None:
        self._lib.llama_memory_seq_rm(self._ctx.memory, seq, start, -1)

    def _failed(self, exc: Exception, seqs: list[int]) -> None:
        self.counters["failures"] += 1
        log.warning("llama.cpp drafting failed (%s); no drafts this step", exc)
        for seq in seqs:
            if 0 <= seq < self.n_seqs:
                self._rm(seq, 0)
                self._cached[seq] = []


@dataclass(frozen=True)
class Lease:
    """Sequence `seq` of `drafting`, lent to one request until it is given back."""

    drafting: SharedLlamaDrafting
    seq: int


class DraftingPool:
    """Per process: one llama.cpp model per GGUF, contexts of `seqs_per_context` sequences lent to requests."""

    def __init__(self, seqs_per_context: int = SEQS_PER_CONTEXT) -> None:
        self.seqs_per_context = seqs_per_context
        self._models: dict[str, Any] = {}
        self._contexts: dict[tuple[Any, ...], list[SharedLlamaDrafting]] = {}
        self._free: dict[int, list[int]] = {}  # id(context) -> its free sequences
        self._lock = threading.Lock()

    def lease(self, gguf: str, n_threads: int, n_ctx_seq: int) -> Lease:
        """A free sequence of a context for (gguf, threads, cells per sequence); a new context only when all are lent."""
        key = (str(gguf), n_threads, n_ctx_seq)
        with self._lock:
            for drafting in self._contexts.get(key, []):
                free = self._free[id(drafting)]
                if free:
                    return Lease(drafting, free.pop(0))
            model = self._models.get(key[0])
            if model is None:
                model = self._models[key[0]] = _load_model(key[0])
            drafting = SharedLlamaDrafting(model, key[0], n_seqs=self.seqs_per_context, n_ctx_seq=n_ctx_seq,
                                           n_threads=n_threads)
            self._contexts.setdefault(key, []).append(drafting)
            self._free[id(drafting)] = list(range(1, self.seqs_per_context))
            return Lease(drafting, 0)

    def give_back(self, lease: Lease) -> None:
        """Clear the lease's sequence and make it free; a context left idle beside another idle one is closed."""
        drafting = lease.drafting
        drafting.release(lease.seq)
        close = False
        with self._lock:
            free = self._free.get(id(drafting))
            if free is None or lease.seq in free:
                return  # the pool was cleared meanwhile, or given back twice
            free.append(lease.seq)
            free.sort()
            key = (drafting.gguf, drafting.n_threads, drafting.n_ctx_seq)
            idle = [d for d in self._contexts.get(key, []) if len(self._free[id(d)]) == self.seqs_per_context]
            if len(idle) > 1 and drafting in idle:
                self._contexts[key].remove(drafting)
                del self._free[id(drafting)]
                close = True
        if close:
            drafting.close()

    def contexts(self, gguf: str | Path) -> list[SharedLlamaDrafting]:
        """The open contexts on `gguf` (any threads and sizes)."""
        with self._lock:
            return [d for key, group in self._contexts.items() if key[0] == str(gguf) for d in group]

    def stats(self) -> dict[str, int]:
        """Models loaded, contexts open and sequences lent right now."""
        with self._lock:
            contexts = [d for group in self._contexts.values() for d in group]
            lent = sum(self.seqs_per_context - len(self._free[id(d)]) for d in contexts)
            return {"models": len(self._models), "contexts": len(contexts), "leased": lent}

    def clear(self) -> None:
        """Close every context and model (at exit, while llama_cpp can still free them)."""
        with self._lock:
            contexts = [d for group in self._contexts.values() for d in group]
            models = list(self._models.values())
            self._contexts, self._free, self._models = {}, {}, {}
        for obj in [*contexts, *models]:
            try:
                obj.close()
            except Exception:  # closing at exit is best effort
                pass


DRAFT_POOL = DraftingPool()
atexit.register(DRAFT_POOL.clear)
