"""One llama.cpp context drafting for every request of a batch: a KV sequence per request, lockstep decodes.

The batch scheduler (specguard.engine.batching) verifies all running requests in one target
forward. Drafting them one by one with a llama.cpp context each costs one llama.cpp decode per
drafted token per request, on the drafter's one core: with 8 requests the drafter, not the target,
becomes the bottleneck (docs/benchmarks.md, `server`: 1.34x one client at 8 clients). Decoding is
memory-bound for a small model, so one `llama_decode` that carries the next token of every request
costs little more than one that carries one token. `SharedLlamaDrafting` does that:

- one llama.cpp context on the drafter's GGUF with `n_seqs` KV sequences (`n_seq_max`, not unified:
  each sequence has its own `n_ctx_seq` cells), one sequence lent to each batched request;
- `propose_many([(seq, context, k), ...])` re-syncs each sequence to the longest common prefix of
  what it holds and the request's context (the same re-sync as `LlamaCppDrafter`), evaluates every
  request's new tokens in shared decodes, then drafts greedily in lockstep: each decode carries the
  last drafted token of every request that still needs tokens, until each has its `k`.

It is as untrusted as the per-request drafter: its tokens go through each request's verification
(validated, then accepted only where they equal the target's own choice), so outputs do not depend on
it. A failed decode (e.g. a sequence out of cells) empties every sequence and returns no drafts for
that step; it never fails a request. Greedy drafts only (sampled requests get the drafter's argmax,
as `LlamaCppDrafter` without `share_seed`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..llamacpp_runtime import llama_cpp_module

log = logging.getLogger("specguard.drafters.llamacpp_batch")

#: tokens one shared decode may carry (a new request's prompt is evaluated in chunks of this many)
DEFAULT_N_BATCH = 512


class SharedLlamaDrafting:
    """A llama.cpp context with one KV sequence per batched request; drafts for many requests at once."""

    def __init__(self, gguf: str | Path, *, n_seqs: int, n_ctx_seq: int, n_threads: int = 1,
                 n_batch: int = DEFAULT_N_BATCH) -> None:
        llama_cpp = llama_cpp_module()
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.gguf = str(gguf)
        self.n_seqs = n_seqs
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self._model = _internals.LlamaModel(path_model=self.gguf, params=llama_cpp.llama_model_default_params(),
                                            verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_seqs * n_ctx_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seqs
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = False
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.vocab = int(self._model.n_vocab())
        self._cached: list[list[int]] = [[] for _ in range(n_seqs)]
        self._lock = threading.Lock()
        self.counters = {"calls": 0, "decodes": 0, "drafted": 0, "evaluated": 0, "reused": 0, "failures": 0}

    # -- public ----------------------------------------------------------------------------

    def propose_many(self, requests: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """Greedy drafts of up to k tokens for each (sequence, context, k), in the order given."""
        with self._lock:
            self.counters["calls"] += 1
            try:
                return self._propose(requests)
            except Exception as exc:  # an untrusted drafter failing costs this step's drafts only
                self.counters["failures"] += 1
                log.warning("shared llama.cpp drafting failed (%s); no drafts this step", exc)
                self._clear()
                return [[] for _ in requests]

    def release(self, seq: int) -> None:
        """Forget sequence `seq` (its request left the batch)."""
        with self._lock:
            self._rm(seq, 0)
            self._cached[seq] = []

    def close(self) -> None:
        with self._lock:
            for obj in (self._batch, self._ctx, self._model):
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
            if not 0 <= seq < self.n_seqs or k <= 0 or not context or seq in want:
                continue
            if any(not 0 <= int(t) < self.vocab for t in context):
                continue  # a target with a larger vocabulary than the GGUF: llama.cpp would abort
            pending[seq] = self._resync(seq, [int(t) for t in context])
            want[seq], drafts[seq] = k, []
        while pending:
            finished = self._decode_some(pending)
            for seq in finished:
                token = self._argmax(finished[seq])
                drafts[seq].append(token)
                if len(drafts[seq]) >= want[seq]:
                    del pending[seq]
                else:
                    pending[seq] = [token]
        self.counters["drafted"] += sum(len(d) for d in drafts.values())
        return [drafts.get(seq, [])[:k] if seq in want else [] for seq, _, k in requests]

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

    def _argmax(self, index: int) -> int:
        logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(index), shape=(self.vocab,))
        return int(np.argmax(logits))

    def _rm(self, seq: int, start: int) -> None:
        self._lib.llama_memory_seq_rm(self._ctx.memory, seq, start, -1)

    def _clear(self) -> None:
        self._ctx.kv_cache_clear()
        self._cached = [[] for _ in range(self.n_seqs)]
