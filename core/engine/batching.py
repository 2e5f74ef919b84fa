"""Continuous batching for the built-in engine: one loop owns the target model, one forward per step.

A serving node with many concurrent requests runs them through `BatchScheduler`. Each request
keeps its own drafter and its own decoding state (`speculative.SpeculativeRun`, the object
`SpeculativeEngine.stream` drives), so drafts, the acceptance rule (`verify_step`), stops, records
and transcripts follow exactly the solo code path; only the target's forward passes are shared.

One iteration (`step()`):

1. admit waiting requests (up to `max_batch` running);
2. every running request polls its `should_stop` (cancelled requests leave with
   `finish_reason = "cancelled"`) and asks its drafter for a draft; requests whose drafters lease
   sequences of one shared drafter (`Drafter.shared_lease()`: the llama.cpp drafter's pooled context,
   a KV sequence per request, each decode carrying every request's next token) are drafted together,
   without draft-ahead threads of their own (one thread drafts the group's next blocks during the
   forward instead, `_GroupAhead`), and a row cap never cuts a draft below its drafter's
   `batch_min_draft`;
3. **one** target forward over all running requests: rows are left-padded to the longest
   (uncached tokens + draft), each row has its own positions (`position_ids`) and a 4-D mask that
   lets a token see only its own request's cache up to its own position. Keys and values live in
   one store `[max_batch, kv_heads, capacity, head_dim]` per layer, a request per slot, written at
   the request's positions; padding is never written. The last `len(draft) + 1` logits rows of
   each row go to that request's acceptance rule;
4. each request "rolls back" to its accepted prefix by lowering its cached length (stale entries
   past it are masked and later overwritten), streams its StepEvent, and leaves when finished;
5. the requests admitted in 1. run their first steps (their prompts plus first drafts) together in
   a forward of their own, in the slots after the running requests', and run with them from then on
   (prompts in the same forward as one-token decode rows would pad every row to the prompt).

This is the ragged-batch design of gpt-fast / vLLM reduced to what a CPU needs: no paging, slots
compacted when a request leaves. Batching changes the matrix shapes, so logits may differ from a
solo run in the last bits (~1e-6): outputs are identical unless a decision is a near-tie below that,
which `TokenRecord.margin` shows (tests/engine/test_batching.py counts such flips).

Requests talk to the scheduler through callbacks: `emit("event", StepEvent)` per step, then exactly
one `emit("done", Transcript)` or `emit("error", exception)`. `step()` can be driven by hand (tests)
or by the scheduler's own thread (`start()`, the server).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..drafters.base import Drafter
from ..models import LoadedModel
from ..transcript import SamplingParams
from . import kv
from .interface import StepCallback, StopCheck
from .speculative import MIN_VERIFY_ROWS, DraftLength, Plan, SpeculativeRun, check_request

log = logging.getLogger("specguard.engine.batching")

#: emit(kind, value): "event" + StepEvent, then "done" + Transcript or "error" + exception
Emit = Callable[[str, Any], None]

DEFAULT_MAX_BATCH = 8
#: the server's bound on a batched forward's rows (drafts shrink as more requests run; see BatchScheduler)
DEFAULT_MAX_ROWS = 8


@dataclass
class BatchRequest:
    """One request handed to the scheduler: what `SpeculativeEngine.stream` takes, plus where events go."""

    prompt_ids: list[int]
    params: SamplingParams
    #: the request's own drafter, or a zero-argument factory called in the scheduler's thread
    drafter: Drafter | Callable[[], Drafter]
    emit: Emit
    top_logprobs: int = 5
    on_step: StepCallback | None = None
    should_stop: StopCheck | None = None
    run: SpeculativeRun | None = field(default=None, repr=False)
    slot: int = -1
    ended: bool = False


class KVStore:
    """Keys and values of every running request: per layer `[slots, kv_heads, capacity, head_dim]`.

    A request owns one slot; its token at position p has its keys at index p. Layers are allocated
    at their first write; capacity grows in steps of `grow` positions as requests get longer, and
    everything is released when the batch empties.
    """

    def __init__(self, slots: int, grow: int = 256) -> None:
        self.slots = slots
        self.grow = grow
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.capacity = 0

    @property
    def allocated(self) -> bool:
        return bool(self.keys)

    def ensure(self, length: int) -> None:
        """Room for positions 0..length-1 in every slot."""
        if length <= self.capacity:
            return
        new = -(-length // self.grow) * self.grow
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            k2 = torch.zeros(k.shape[0], k.shape[1], new, k.shape[3], dtype=k.dtype)
            v2 = torch.zeros(v.shape[0], v.shape[1], new, v.shape[3], dtype=v.dtype)
            k2[:, :, : self.capacity] = k
            v2[:, :, : self.capacity] = v
            self.keys[i], self.values[i] = k2, v2
        self.capacity = new

    def layer(self, idx: int, key_like: torch.Tensor, value_like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `idx`'s (keys, values), allocated like the model's `[batch, kv_heads, rows, head_dim]` states."""
        while len(self.keys) <= idx:
            self.keys.append(torch.zeros(self.slots, key_like.shape[1], self.capacity, key_like.shape[3],
                                         dtype=key_like.dtype))
            self.values.append(torch.zeros(self.slots, value_like.shape[1], self.capacity, value_like.shape[3],
                                           dtype=value_like.dtype))
        return self.keys[idx], self.values[idx]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions to slot `dst`."""
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def release(self) -> None:
        self.keys, self.values, self.capacity = [], [], 0


class _BatchCache:
    """The cache object the model sees for one batched forward (duck-typed: it only needs `update`).

    Row r is slot `base + r`; its real tokens are its last `n_r` columns, whose keys/values are
    written at positions `cached_r ..`; the model attends over the first `length` positions.
    """

    def __init__(self, store: KVStore, rows: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor,
                 base: int, batch: int, length: int) -> None:
        self.store, self.rows, self.positions, self.columns = store, rows, positions, columns
        self.base, self.batch, self.length = base, batch, length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.store.layer(layer_idx, key_states, value_states)
        # [N, heads, head_dim] per written token: index_put over (slot, position)
        keys[self.rows + self.base, :, self.positions] = key_states[self.rows, :, self.columns]
        values[self.rows + self.base, :, self.positions] = value_states[self.rows, :, self.columns]
        end = self.base + self.batch
        return keys[self.base:end, :, : self.length], values[self.base:end, :, : self.length]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # not used when position_ids and a 4-D mask are given
        return self.length


class BatchScheduler:
    """Runs many requests' speculative decoding through one target forward per iteration."""

    def __init__(self, target: LoadedModel, *, max_batch: int = DEFAULT_MAX_BATCH,
                 min_verify_rows: int = MIN_VERIFY_ROWS, max_rows: int | None = None) -> None:
        """`max_rows` bounds a batched forward's rows: with B requests running, each draft is capped
        at max_rows // B - 1 tokens (None: drafts as long as alone; then every request's steps equal
        its solo run's). Outputs never depend on it; speed does: padded rows cost compute."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_rows is not None and max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.target = target
        self.max_batch = max_batch
        self.min_verify_rows = min_verify_rows
        self.max_rows = max_rows
        self.store = KVStore(max_batch)
        self.running: list[BatchRequest] = []
        self._pending: deque[BatchRequest] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pool: ThreadPoolExecutor | None = None
        self._joining: list[BatchRequest] = []
        #: per shared drafter (id of its `.drafting`): the group's next blocks, drafted during the forward
        self._ahead: dict[int, _GroupAhead] = {}
        #: forwards run so far and the rows they carried (batched decode forwards, prefill forwards)
        self.stats = {"iterations": 0, "batched_forwards": 0, "batched_rows": 0, "prefills": 0,
                      "ahead_offered": 0, "ahead_used": 0}

    # -- submitting -------------------------------------------------------------------------

    def submit(self, request: BatchRequest) -> BatchRequest:
        """Queue `request`; it joins at the next iteration with room (events arrive through `emit`)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batch scheduler has stopped")
            self._pending.append(request)
            self._cond.notify()
        return request

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self.running and not self._pending

    # -- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        """Run `step()` in a daemon thread until `stop()`."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="specguard-batch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still running or waiting end with an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            left = list(self.running) + list(self._pending)
            self.running, self._pending = [], deque()
        for req in left:
            self._fail(req, RuntimeError("the server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._drop_ahead()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self.running and not self._pending:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # a bug in the loop itself: fail everything in flight, keep serving
                log.exception("batch iteration failed")
                with self._cond:
                    left = list(self.running) + list(self._joining)
                    self.running, self._joining = [], []
                self.store.release()
                for req in left:
                    self._fail(req, RuntimeError("internal error in the batch scheduler"))

    def run_until_idle(self, max_iterations: int = 1_000_000) -> None:
        """Drive `step()` in the calling thread until nothing is running or waiting (tests, scripts)."""
        for _ in range(max_iterations):
            if not self.step():
                return
        raise RuntimeError("run_until_idle: too many iterations")

    def step(self) -> bool:
        """One iteration: plan, one batched forward, apply, admit. False when there was nothing to do."""
        with self._cond:
            room = self.max_batch - len(self.running)
            joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            self._joining = joining
        if not self.running and not joining:
            return False
        self.stats["iterations"] += 1
        # 1. running requests: cancelled/finished ones leave; the others draft
        plans: list[tuple[BatchRequest, Plan]] = []
        for req, plan in self._plan_all(list(self.running)):
            if plan is None:
                self._leave(req)
            elif plan is not False:
                plans.append((req, plan))
        self._compact()
        # 2. one forward over every running request
        if plans:
            self._step_rows(plans, 0)
        # 3. newcomers: their first steps (the prompts) run together in a forward of their own
        self._compact()
        self._join_all(joining)
        for req in list(self.running):
            if req.run is not None and req.run.done:
                self._leave(req)
        self._compact()
        if not self.running:
            self.store.release()
            self._drop_ahead()
        self._joining = []
        return True

    # -- pieces -------------------------------------------------------------------------------

    def _plan_all(self, running: list[BatchRequest]) -> list[tuple[BatchRequest, Any]]:
        """(request, its Plan, None when it ended, or False when it failed) for each running request.

        Drafters that cost time per proposal (a remote drafter's HTTP call, a draft model's forwards)
        propose in parallel threads, each request's drafter in one thread; lookups run inline.
        """
        cap = None if self.max_rows is None or not running else max(0, self.max_rows // len(running) - 1)
        shared = self._draft_shared(running, cap)

        def plan(r: BatchRequest) -> Plan | None:
            return r.run.plan(_draft_cap(r, cap), shared.get(id(r)))  # type: ignore[union-attr]

        slow = [r for r in running if _slow_drafter(r.drafter) and id(r) not in shared]
        if len(slow) < 2:
            return [(r, self._guard(r, lambda r=r: plan(r))) for r in running]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_batch, thread_name_prefix="specguard-draft")
        futures = {id(r): self._pool.submit(plan, r) for r in slow}
        out = []
        for r in running:
            future = futures.get(id(r))
            out.append((r, self._guard(r, future.result if future is not None else lambda r=r: plan(r))))
        return out

    def _draft_shared(self, planned: list[BatchRequest], cap: int | None,
                      others: list[BatchRequest] | None = None, ahead: bool = True) -> dict[int, list[int]]:
        """Drafts made together for the `planned` requests whose drafters lease sequences of one shared
        drafter (`Drafter.shared_lease`: one pooled llama.cpp context, a KV sequence per request, each decode
        carrying the next token of all of them): {id(request): drafted tokens}. Groups count `others` too
        (running requests already drafted this step). A request alone in its group drafts with its own
        drafter (and drafts ahead); grouped ones hold their draft-ahead thread, and with `ahead` their
        group's next blocks are drafted during the forward (`_GroupAhead`)."""
        mine = {id(r) for r in planned}
        drafts: dict[int, list[int]] = {}
        groups = _lease_groups([*planned, *(others or [])])
        if ahead:
            self._drop_ahead(set(self._ahead) - set(groups))  # groups that are gone: their blocks are of no use
        for key, members in groups.items():
            together = len(members) > 1
            for r, _ in members:
                _hold_ahead(r.drafter, together)
            asked = [(r, lease) for r, lease in members if id(r) in mine]
            if not ahead:  # newcomers: drafted in lockstep, the running group's blocks stay
                drafts.update(_propose_together(asked, None) if together and asked else {})
                continue
            job = self._ahead.pop(key, None)
            if together and asked:
                drafts.update(self._propose_group(asked, cap, job))
            elif job is not None:
                job.join()
        return drafts

    def _drop_ahead(self, keys: set[int] | None = None) -> None:
        """Join and forget the draft-ahead jobs of `keys` (None: all; a batch that emptied, groups that left)."""
        for key in list(self._ahead) if keys is None else keys:
            job = self._ahead.pop(key, None)
            if job is not None:
                job.join()

    def _propose_group(self, members: list[tuple[BatchRequest, Any]], cap: int | None,
                       ahead: _GroupAhead | None) -> dict[int, list[int]]:
        """Drafts for one shared drafter's `members`: the blocks drafted ahead where they still fit each
        request's context, the others drafted now in lockstep; then, when every member drafts ahead
        (`hold_ahead`), the group's next blocks are drafted in one background thread during the forward."""
        drafts: dict[int, list[int]] = {}
        fresh = []
        for r, lease in members:
            got = ahead.take(r, _draft_cap(r, cap)) if ahead is not None else None
            self.stats["ahead_offered"] += ahead is not None
            self.stats["ahead_used"] += bool(got)
            if got:
                drafts[id(r)] = got
            else:
                fresh.append((r, lease))
        if fresh:
            drafts.update(_propose_together(fresh, cap))
        if all(hasattr(r.drafter, "hold_ahead") for r, _ in members):
            self._ahead[id(members[0][1].drafting)] = _GroupAhead(members, drafts, cap)
        return drafts

    def _guard(self, req: BatchRequest, fn: Callable[[], Any]) -> Any:
        """fn(), or False after failing `req` with what it raised."""
        try:
            return fn()
        except Exception as exc:
            self._remove(req)
            self._fail(req, exc)
            return False

    def _forward_rows(self, items: list[tuple[BatchRequest, Plan]], base: int) -> tuple[torch.Tensor, int]:
        """One forward over `items` (row r = slot base + r): (logits [B, keep, vocab], keep)."""
        feeds = [plan.uncached + plan.draft for _, plan in items]
        batch = len(items)
        width = max(len(f) for f in feeds)
        if 1 < batch * width < self.min_verify_rows:  # 2-3 rows run as slow GEMVs on CPUs (pad_rows)
            width = -(-self.min_verify_rows // batch)
        keep = max(plan.rows for _, plan in items)
        cached = [req.run.cached for req, _ in items]  # type: ignore[union-attr]
        length = max(c + len(f) for c, f in zip(cached, feeds, strict=True))
        ids = torch.zeros(batch, width, dtype=torch.long)
        pos = torch.zeros(batch, width, dtype=torch.long)
        rows, positions, columns = [], [], []
        for r, ((req, _), feed, c) in enumerate(zip(items, feeds, cached, strict=True)):
            assert req.slot == base + r, "the rows of a forward are consecutive slots"
            n = len(feed)
            ids[r, width - n:] = torch.tensor(feed, dtype=torch.long)
            pos[r, width - n:] = torch.arange(c, c + n)
            rows += [r] * n
            positions += range(c, c + n)
            columns += range(width - n, width)
        # a token sees its own request's keys up to its own position; padding columns see position 0
        mask = (torch.arange(length)[None, None, :] <= pos[:, :, None])[:, None, :, :]
        model = self.target.model
        if getattr(model.config, "_attn_implementation", "sdpa") != "sdpa":  # eager adds the mask to the scores
            dtype = next(model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
        self.store.ensure(length)
        cache = _BatchCache(self.store, torch.tensor(rows), torch.tensor(positions), torch.tensor(columns),
                            base, batch, length)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                        logits_to_keep=keep, **{_cache_kwarg(model): cache})
            return out.logits[:, -keep:].float(), keep

    def _step_rows(self, items: list[tuple[BatchRequest, Plan]], base: int) -> list[BatchRequest]:
        """Forward `items` together, apply each request's step and stream it; the requests that did not fail."""
        try:
            logits, keep = self._forward_rows(items, base)
        except Exception as exc:  # the whole batch shared this forward
            log.exception("batched forward failed")
            for req, _ in items:
                self._remove(req)
                self._fail(req, exc)
            return []
        self.stats["batched_forwards"] += 1
        self.stats["batched_rows"] += len(items)
        ok = []
        for r, (req, plan) in enumerate(items):
            event = self._guard(req, lambda req=req, plan=plan, r=r: req.run.apply(  # type: ignore[union-attr]
                plan, logits[r, keep - plan.rows:], _no_crop))
            if event is not False:
                self._emit_event(req, event)
                ok.append(req)
        return ok

    def _join_all(self, joining: list[BatchRequest]) -> None:
        """Check and start each newcomer, draft the ones sharing a drafter together, then run their first
        steps (their prompts) together in one forward of their own, in the slots after the running
        requests'; then they run with the others."""
        started = [req for req in joining if self._guard(req, lambda req=req: self._start_run(req)) is not False]
        shared = self._draft_shared(started, None, others=self.running, ahead=False)
        ready: list[tuple[BatchRequest, Plan]] = []
        for req in started:
            plan = self._guard(req, lambda req=req: req.run.plan(None, shared.get(id(req))))  # type: ignore[union-attr]
            if plan is None:  # cancelled before it started
                self._finish(req)
            elif plan is not False:
                ready.append((req, plan))
        if not ready:
            return
        base = len(self.running)
        for i, (req, _) in enumerate(ready):
            req.slot = base + i
        self.stats["prefills"] += len(ready)
        joined = self._step_rows(ready, base)
        with self._cond:
            self.running.extend(joined)  # slots base.. in order; failed ones leave holes for _compact

    def _start_run(self, req: BatchRequest) -> None:
        """Build the request's drafter (in this thread), check the request and start its run."""
        if not isinstance(req.drafter, Drafter):
            req.drafter = req.drafter()
        assert isinstance(req.drafter, Drafter)
        prompt_ids, params, top_n = check_request(self.target, req.drafter, req.prompt_ids, req.params,
                                                  req.top_logprobs)
        run = SpeculativeRun(self.target, req.drafter, prompt_ids, params, top_n=top_n,
                             draft_length=DraftLength(maximum=int(getattr(req.drafter, "max_draft", 12))),
                             min_verify_rows=self.min_verify_rows, on_step=req.on_step,
                             should_stop=req.should_stop)
        req.run = run
        run.start()

    def _compact(self) -> None:
        """Move running requests into slots 0..B-1 (in order) after some left."""
        for i, req in enumerate(self.running):
            if req.slot != i:
                with torch.inference_mode():
                    self.store.move(req.slot, i, req.run.cached)  # type: ignore[union-attr]
                req.slot = i

    def _remove(self, req: BatchRequest) -> None:
        with self._cond:
            if req in self.running:
                self.running.remove(req)

    def _leave(self, req: BatchRequest) -> None:
        self._remove(req)
        self._finish(req)

    def _finish(self, req: BatchRequest) -> None:
        """Close the request's drafter (it gives back what it leased) and hand over its transcript."""
        if req.ended:
            return
        try:
            assert req.run is not None
            req.run.close()
            transcript = req.run.transcript()
        except Exception as exc:
            self._fail(req, exc)
            return
        req.ended = True
        _safe_emit(req, "done", transcript)

    def _fail(self, req: BatchRequest, exc: BaseException) -> None:
        if req.ended:
            return
        req.ended = True
        if req.run is not None:
            try:
                req.run.close()
            except Exception:
                log.exception("drafter finish failed")
        _safe_emit(req, "error", exc)

    def _emit_event(self, req: BatchRequest, event: Any) -> None:
        _safe_emit(req, "event", event)


def _lease_groups(requests: list[BatchRequest]) -> dict[int, list[tuple[BatchRequest, Any]]]:
    """The requests whose drafters lease a sequence of a shared drafter, grouped by that drafter."""
    groups: dict[int, list[tuple[BatchRequest, Any]]] = {}
    for r in requests:
        lease = _lease(r)
        if lease is not None:
            groups.setdefault(id(lease.drafting), []).append((r, lease))
    return groups


def _lease(req: BatchRequest) -> Any:
    """The request's shared-drafter lease, or None (no run yet, done, no lease, or its drafter failed to say)."""
    if req.run is None or req.run.done or not isinstance(req.drafter, Drafter):
        return None
    try:
        lease = req.drafter.shared_lease()
    except Exception:  # untrusted drafter machinery: this request drafts alone
        return None
    return lease if hasattr(lease, "drafting") and hasattr(lease, "seq") else None


def _hold_ahead(drafter: Any, hold: bool) -> None:
    """Tell a draft-ahead drafter whether a shared drafter drafts for it (then it starts no thread of its own)."""
    holder = getattr(drafter, "hold_ahead", None)
    if holder is not None:
        holder(hold)


class _GroupAhead:
    """PEARL for a batch: one thread drafts every member's next block as if its whole draft is accepted
    (the block's first token guesses the target's bonus token) while the target verifies this step.

    Only the shared drafter is touched (its own lock orders it with everything else); a block is used
    only if the request's next context is its base plus the block's first tokens, and like every draft
    it is then checked by the target, so outputs do not depend on it."""

    def __init__(self, members: list[tuple[BatchRequest, Any]], drafts: dict[int, list[int]], cap: int | None) -> None:
        self.bases: dict[int, list[int]] = {}
        asks = []
        for r, lease in members:
            run = r.run
            assert run is not None
            draft = drafts.get(id(r), [])
            left = run.budget - len(run.output) - len(draft) - 2  # tokens the next step may still draft
            k = min(int(getattr(r.drafter, "max_draft", 12)), run.draft_size(_draft_cap(r, cap)) + 1, left)
            if k > 0:
                self.bases[id(r)] = list(run.tokens) + list(draft)
                asks.append((id(r), lease.seq, k + 1))
        self.blocks: dict[int, list[int]] = {}
        self._drafting = members[0][1].drafting
        self._asks = asks
        self._thread = threading.Thread(target=self._run, name="specguard-batch-ahead", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # no thread available: the next step drafts in lockstep
            self.bases = {}

    def _run(self) -> None:
        try:
            answers = self._drafting.propose_many([(seq, self.bases[rid], k) for rid, seq, k in self._asks])
            self.blocks = {rid: [int(t) for t in a] for (rid, _, _), a in zip(self._asks, answers, strict=False)}
        except Exception:  # an untrusted drafter failing in the background costs its blocks only
            log.exception("batch draft-ahead failed")

    def join(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()

    def take(self, req: BatchRequest, max_draft: int | None) -> list[int] | None:
        """The rest of `req`'s block if its context is the block's base plus the block's first tokens."""
        self.join()
        base, block, run = self.bases.get(id(req)), self.blocks.get(id(req)), req.run
        if base is None or block is None or run is None or run.tokens[: len(base)] != base:
            return None
        emitted = run.tokens[len(base):]
        if not emitted or block[: len(emitted)] != emitted:
            return None
        return block[len(emitted):][: run.draft_size(max_draft)] or None


def _propose_together(members: list[tuple[BatchRequest, Any]], cap: int | None) -> dict[int, list[int]]:
    """One shared drafter's drafts for `members` (same `.drafting`), each checked later like any proposal."""
    asks = [(lease.seq, list(r.run.tokens), r.run.draft_size(_draft_cap(r, cap))) for r, lease in members]
    try:
        answers = members[0][1].drafting.propose_many(asks)
        return {id(r): list(tokens) for (r, _), tokens in zip(members, answers, strict=False)}
    except Exception:  # a failing shared drafter costs drafts, never a request: they draft alone this step
        log.exception("shared drafting failed")
        return {}


def _draft_cap(req: BatchRequest, cap: int | None) -> int | None:
    """The row cap's draft bound for `req`, never below its drafter's `batch_min_draft`."""
    if cap is None:
        return None
    return max(cap, int(getattr(req.drafter, "batch_min_draft", 0) or 0))


def _slow_drafter(drafter: Any) -> bool:
    """A drafter whose proposals cost time (not a lookup, not plain decoding)."""
    return isinstance(drafter, Drafter) and not drafter.cheap_drafts and drafter.name != "none"


def _no_crop(keep: int) -> None:
    """The store needs no crop: a request's cached length is its rollback (stale entries are masked)."""


def _safe_emit(req: BatchRequest, kind: str, value: Any) -> None:
    try:
        req.emit(kind, value)
    except Exception:  # a consumer's bug must not stop the batch
        log.exception("batch consumer failed on %s", kind)


def _cache_kwarg(model: Any) -> str:
    return kv._cache_kwarg(type(model))

