"""Draft-ahead (PEARL, Liu et al. 2024): the drafter drafts block n+1 while the target verifies block n.

`AheadDrafter` wraps any drafter. After `propose(c, k)` returns a draft `d`, a background thread
asks the wrapped drafter for a continuation of `c + d`, as if the target will accept the whole
draft: its first token `g` is the drafter's guess of the target's bonus token, the rest is the next
block. At the next `propose(c', k')`:

- if `c'` extends `c + d` with exactly the tokens the background drafted (full acceptance and the
  bonus guessed right: `c' = c + d + [g]`), the rest of the background draft is returned at once;
- otherwise (a rejection, or a wrong bonus guess) the background draft is discarded and the
  wrapped drafter drafts synchronously from `c'` (a drafter with a KV cache, like `llamacpp`,
  re-syncs to the common prefix, so the discarded work costs no re-evaluation of the context).

The engine needs no change: to it this is an ordinary drafter. Correctness does not depend on
anything the thread does: every proposal is checked by the engine and every emitted token is the
target's own choice, so outputs equal plain decoding whatever the background drafts, however slow
or wrong it is. The wrapped drafter is only ever used by one thread at a time (the background job
is stopped and joined before the engine's thread touches it again), the background thread never
sees the target model, and `finish()` (which the engine calls on completion, cancellation and
errors) stops and joins it before the wrapped drafter releases its state.

Waiting (`ahead_wait`): `all` waits for the whole next block; `ready` stops the background as
soon as the target is done and takes what it has drafted by then (PEARL's adaptive draft length),
topping it up synchronously to `ahead_min_tokens`. Stopping early needs a wrapped drafter with
`propose_until(context, k, keep_going)`, which calls `keep_going(drafted_so_far)` after each token
and returns what it has when that is False (`llamacpp` has it); with such a drafter the background
also stops as soon as its guessed bonus turns out wrong. Other drafters always finish their block.

Options (drafter options / the policy's `[drafter]` table): `draft_ahead` (false), `ahead_wait`
(`all`), `ahead_min_tokens` (2), `ahead_cpus` (none: a list of CPU ids, or "0,1", the background
thread pins itself to; Linux only).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from ..errors import UsageError
from ..transcript import SamplingParams
from .base import Drafter, Proposal

THREAD_NAME = "specguard-draft-ahead"
WAIT_MODES = ("all", "ready")


class _Job:
    """One background draft: `inner` continuing `base` by up to `k` tokens."""

    def __init__(self, base: list[int], k: int) -> None:
        self.base = base
        self.k = k
        self.stop = threading.Event()
        #: what the target emitted after `base` (set by the engine's thread when it comes back)
        self.emitted: list[int] | None = None
        self.tokens: list[int] | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.thread: threading.Thread | None = None


class AheadDrafter(Drafter):
    """Wrap `inner` so it drafts the next block in a background thread while the target verifies."""

    def __init__(
        self,
        inner: Drafter,
        *,
        wait: str = "all",
        min_tokens: int = 2,
        cpus: list[int] | None = None,
    ) -> None:
        if wait not in WAIT_MODES:
            raise UsageError("unknown draft-ahead wait mode", field="ahead_wait", got=wait, expected=list(WAIT_MODES))
        if min_tokens < 1:
            raise UsageError("ahead_min_tokens must be at least 1", field="ahead_min_tokens", got=min_tokens)
        self.inner = inner
        self.name = inner.name
        self.trusted = inner.trusted
        self.cheap_drafts = inner.cheap_drafts
        self.max_draft = int(getattr(inner, "max_draft", Drafter.max_draft))
        self.batch_min_draft = int(getattr(inner, "batch_min_draft", 0))
        self.wait = wait
        self.min_tokens = min_tokens
        self.cpus = sorted(set(cpus)) if cpus else None
        self._job: _Job | None = None
        self._held = False
        self._max_tokens: int | None = None
        self._prompt_len = 0
        self.counters: dict[str, Any] = {
            "started": 0, "reused": 0, "discarded": 0, "failed": 0, "sync": 0, "topped_up": 0,
            "tokens_reused": 0, "wait_seconds": 0.0, "background_seconds": 0.0,
        }

    # -- Drafter interface ---------------------------------------------------------------

    def start(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self._cancel()
        self._prompt_len = len(prompt_ids)
        self._max_tokens = int(params.max_tokens)
        self.inner.start(prompt_ids, params)

    def propose(self, context: list[int], k: int) -> Proposal:
        context = list(context)
        job, self._job = self._job, None
        tokens: list[int] | None = None
        if job is not None:
            tokens = self._take(job, context, k)
        if tokens is None:
            self.counters["sync"] += 1
            tokens = [int(t) for t in self.inner.propose(list(context), k).tokens][:k]
        if not self._held:
            self._launch(context + tokens, k)
        return Proposal(tokens)

    def observe(self, drafted: int, accepted: int) -> None:
        self.inner.observe(drafted, accepted)

    def finish(self) -> None:
        try:
            self._cancel()
        finally:
            self.inner.finish()

    def shared_lease(self) -> Any:
        return self.inner.shared_lease()

    def hold_ahead(self, hold: bool) -> None:
        """Held (a batch drafts this request together with others through a shared drafter): the background
        block is stopped and no new one starts, so no thread per request competes for the drafter's core;
        released, drafting ahead resumes after the next proposal."""
        self._held = hold
        if hold:
            self._cancel()

    def describe(self) -> dict[str, Any]:
        info = dict(self.inner.describe())
        info["draft_ahead"] = {"wait": self.wait, "min_tokens": self.min_tokens, "cpus": self.cpus,
                               **{k: round(v, 6) if isinstance(v, float) else v for k, v in self.counters.items()}}
        return info

    # -- background jobs -------------------------------------------------------------------

    def _launch(self, base: list[int], k: int) -> None:
        """Start drafting the block after `base` (guessed bonus token + up to k+1 tokens)."""
        ahead = min(self.max_draft, k + 1)
        if self._max_tokens is not None:
            # the output after full acceptance would hold base + the bonus; the engine then asks
            # for at most (tokens left - 1): no use drafting past the request's budget
            left = self._max_tokens - (len(base) - self._prompt_len) - 2
            ahead = min(ahead, left)
        if ahead <= 0:
            return
        job = _Job(base, ahead + 1)
        job.thread = threading.Thread(target=self._run, args=(job,), name=THREAD_NAME, daemon=True)
        try:
            job.thread.start()
        except RuntimeError:  # no thread available: draft synchronously next step
            self.counters["failed"] += 1
            return
        self.counters["started"] += 1
        self._job = job

    def _run(self, job: _Job) -> None:
        """The background thread: only the wrapped drafter, never the target."""
        t0 = time.perf_counter()
        try:
            if self.cpus is not None and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, self.cpus)  # 0: this thread
            until = getattr(self.inner, "propose_until", None)
            if until is not None:
                proposal = until(list(job.base), job.k, lambda drafted: _keep_going(job, drafted))
            else:
                proposal = self.inner.propose(list(job.base), job.k)
            job.tokens = [int(t) for t in proposal.tokens][: job.k]
        except Exception as exc:  # an untrusted drafter failing in the background costs its block only
            job.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            job.seconds = time.perf_counter() - t0

    def _join(self, job: _Job, stop: bool) -> None:
        if stop:
            job.stop.set()
        t0 = time.perf_counter()
        if job.thread is not None:
            job.thread.join()
        self.counters["wait_seconds"] += time.perf_counter() - t0
        self.counters["background_seconds"] += job.seconds

    def _take(self, job: _Job, context: list[int], k: int) -> list[int] | None:
        """The background block if `context` is its base plus its first drafted token(s), else None."""
        base = job.base
        extends = len(context) > len(base) and context[: len(base)] == base
        emitted = context[len(base):]
        # the background stops as soon as its tokens disagree with what the target emitted
        job.emitted = emitted if extends else None
        # a context that left the assumed path makes the block useless: stop it now; in `ready`
        # mode take whatever is drafted by now
        self._join(job, stop=not extends or self.wait == "ready")
        if job.error is not None:
            self.counters["failed"] += 1
            return None
        drafted = job.tokens or []
        if not extends or drafted[: len(emitted)] != emitted or len(drafted) < len(emitted):
            self.counters["discarded"] += 1
            return None
        tokens = drafted[len(emitted):][:k]
        self.counters["reused"] += 1
        self.counters["tokens_reused"] += len(tokens)
        interrupted = job.stop.is_set() and len(drafted) < job.k
        need = min(k, self.min_tokens)
        if interrupted and len(tokens) < need:
            # stopped early with too short a block: continue it synchronously (the wrapped drafter's
            # state already holds the context and the block, so nothing is evaluated twice)
            self.counters["topped_up"] += 1
            more = self.inner.propose(context + tokens, need - len(tokens)).tokens
            tokens = tokens + [int(t) for t in more][: need - len(tokens)]
        return tokens

    def _cancel(self) -> None:
        """Stop and join the background job, if any (finish, start, cancellation)."""
        job, self._job = self._job, None
        if job is not None:
            self._join(job, stop=True)
            self.counters["discarded"] += 1


def _keep_going(job: _Job, drafted: list[int]) -> bool:
    """Called by the wrapped drafter after each background token: False stops it (keeping its tokens)."""
    if job.stop.is_set():
        return False
    emitted = job.emitted
    if emitted is not None:
        n = min(len(emitted), len(drafted))
        if drafted[:n] != emitted[:n]:
            return False  # the guessed bonus (or a later token) is wrong: the block is useless
    return True


def ahead_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """The checked draft-ahead options (None when `draft_ahead` is off)."""
    on = options.get("draft_ahead", False)
    if isinstance(on, str) and on.lower() in ("true", "false", "1", "0", "yes", "no"):
        on = on.lower() in ("true", "1", "yes")
    if not isinstance(on, bool):
        raise UsageError("draft_ahead must be true or false", field="draft_ahead", got=on)
    if not on:
        return None
    wait = options.get("ahead_wait") or "all"
    if wait not in WAIT_MODES:
        raise UsageError("unknown draft-ahead wait mode", field="ahead_wait", got=wait, expected=list(WAIT_MODES))
    raw = options.get("ahead_min_tokens", 2)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise UsageError("ahead_min_tokens must be an integer", field="ahead_min_tokens", got=raw)
    try:
        min_tokens = int(raw)
    except ValueError as exc:
        raise UsageError("ahead_min_tokens must be an integer", field="ahead_min_tokens", got=raw) from exc
    if not 1 <= min_tokens <= 64:
        raise UsageError("ahead_min_tokens out of range", field="ahead_min_tokens", got=min_tokens, expected="1..64")
    return {"wait": wait, "min_tokens": min_tokens, "cpus": _cpus(options.get("ahead_cpus"))}


def _cpus(value: Any) -> list[int] | None:
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise UsageError("ahead_cpus must be a list of CPU ids", field="ahead_cpus", got=value)
    cpus: list[int] = []
    for item in items:
        try:
            cpu = int(str(item).strip()) if not isinstance(item, bool) else -1
        except ValueError:
            cpu = -1
        if cpu < 0 or cpu >= (os.cpu_count() or 1):
            raise UsageError("ahead_cpus names a CPU this machine does not have", field="ahead_cpus", got=value,
                             expected=f"ids in 0..{(os.cpu_count() or 1) - 1}")
        cpus.append(cpu)
    return cpus


def with_draft_ahead(drafter: Drafter, options: dict[str, Any]) -> Drafter:
    """`drafter` wrapped in an AheadDrafter when the options ask for draft-ahead, else unchanged."""
    checked = ahead_options(options)
    if checked is None or isinstance(drafter, AheadDrafter):
        return drafter
    return AheadDrafter(drafter, **checked)
