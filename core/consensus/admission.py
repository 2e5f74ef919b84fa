"""What a verifier node does for one client before (and instead of) model work.

`VerifyAdmission.handle` wraps a `VerifierService`:

1. parse the request (structure, receipt signature, allow-list, sizes: no model work);
2. look the judgement up by the receipt it judges: a judgement is a function of the receipt,
   transcript, request and response (all bound by the receipt's signature) and of the verifier's
   own model and tolerances, so each receipt is scored at most once; a repeat, or the same receipt
   from another client, only gets a fresh signature over the new nonce. Concurrent requests for the
   same receipt wait for the first one's judgement instead of scoring it again;
3. on a miss, charge the client's work budget (a token bucket in model tokens: prompt + output of
   the transcript, `[consensus] work_tokens_per_second` / `work_burst_tokens`) and judge.

A client that re-sends someone else's receipts therefore costs a signature, and one that sends
new work is limited in model tokens per second, not only in requests per second.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from ..canonical import canonical_json
from .ratelimit import TokenBuckets
from .rederive import Judgement
from .vote import envelope_digest

#: judgements kept (the least recently used is dropped); each is a verdict, reasons and stats
CACHE_SIZE = 4096


def judgement_key(req: Any) -> str:
    """What a judgement depends on from the request: the receipt and every part it binds."""
    parts = {"receipt": envelope_digest(req.envelope), "request": req.request_digest,
             "transcript": hashlib.sha256(canonical_json(req.transcript.to_json())).hexdigest()}
    try:
        parts["response"] = req.response_digest
    except Exception:  # a body without a digest is judged (and rejected) by the service itself
        parts["response"] = None
    return hashlib.sha256(canonical_json(parts)).hexdigest()


class VerifyAdmission:
    """A verifier service behind a judgement cache and a per-client work budget."""

    def __init__(self, service: Any, budget: TokenBuckets | None = None, cache_size: int = CACHE_SIZE) -> None:
        self.service = service
        self.budget = budget
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Judgement] = OrderedDict()
        self._inflight: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.scored = 0  # judgements computed (not served from the cache)

    def handle(self, body: Any, client: str = "unknown") -> dict[str, Any]:
        """The signed vote for `body` from `client`."""
        req = self.service.parse(body)
        key = judgement_key(req)
        with self._lock:
            lock = self._inflight.setdefault(key, threading.Lock())
        try:
            with lock:
                judgement = self._cached(key)
                if judgement is None:
                    if self.budget is not None:
                        cost = len(req.transcript.prompt_ids) + len(req.transcript.output_ids)
                        self.budget.take(client, cost, "model tokens to re-derive")
                    judgement = self.service.judge(req)
                    self._store(key, judgement)
        finally:
            with self._lock:
                if self._inflight.get(key) is lock and not lock.locked():
                    del self._inflight[key]
        return self.service.vote(req, judgement)

    def _cached(self, key: str) -> Judgement | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def _store(self, key: str, judgement: Judgement) -> None:
        kept = Judgement(judgement.verdict, list(judgement.reasons), dict(judgement.stats))  # positions dropped
        with self._lock:
            self.scored += 1
            self._cache[key] = kept
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
