"""Batching and drafting together: requests of one batch drafted by one shared drafter (issue 23).

The scheduler asks one shared drafter (e.g. one llama.cpp context with a KV sequence per request) for
every running request's draft at once; each request still verifies its draft with the target, so its
output is its solo output whatever the shared drafter proposes. Sequences are lent per request and
returned when it leaves; a row cap never shortens such drafts below the drafter's `batch_min_draft`; a
request drafted with others starts no draft-ahead thread of its own.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from engine.test_batching import Sink, compare
from support.tiny import tiny_model

from specguard.drafters.ahead import THREAD_NAME, AheadDrafter
from specguard.drafters.base import Drafter, NoDrafter, Proposal
from specguard.drafters.llamacpp_batch import DRAFT_POOL
from specguard.engine.batching import BatchRequest, BatchScheduler
from specguard.engine.speculative import SpeculativeEngine
from specguard.llamacpp_runtime import target_gguf
from specguard.transcript import SamplingParams

PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [7, 8, 9, 10, 11, 12], [4] * 9 + [9, 3], [2, 40, 2, 40, 2]]
PARAMS = [SamplingParams(max_tokens=30, ignore_eos=True), SamplingParams(max_tokens=24),
          SamplingParams(max_tokens=28, temperature=0.8, seed=7, top_k=20, ignore_eos=True),
          SamplingParams(max_tokens=20, ignore_eos=True)]


def ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in (THREAD_NAME, "specguard-batch-ahead") and t.is_alive()]


class FakeShared:
    """A shared drafter with four sequences to lend: perfect (the solo outputs), or hostile (garbage of every kind)."""

    def __init__(self, references: dict[tuple[int, ...], list[int]], hostile: bool) -> None:
        self.references, self.hostile = references, hostile
        self.calls: list[list[tuple[int, int]]] = []
        self.ahead_calls = 0  # made by the batch's draft-ahead thread (next blocks, drafted during the forward)
        self.free = [0, 1, 2, 3]
        self.released: list[int] = []

    def lease(self):
        return SimpleNamespace(drafting=self, seq=self.free.pop(0))

    def give_back(self, lease) -> None:
        self.released.append(lease.seq)
        self.free.append(lease.seq)

    def propose_many(self, asks):
        if threading.current_thread().name == "specguard-batch-ahead":
            self.ahead_calls += 1
        else:
            self.calls.append([(seq, k) for seq, _, k in asks])
        out = []
        for i, (_, context, k) in enumerate(asks):
            if self.hostile:
                out.append([[10 ** 9], [-1], [0] * (k + 3), ["x"], []][(len(self.calls) + i) % 5])
                continue
            prompt = next(p for p in self.references if tuple(context[: len(p)]) == p)
            done = len(context) - len(prompt)
            out.append(self.references[prompt][done: done + k])
        return out


class SharingDrafter(Drafter):
    """Proposes nothing alone; leases a sequence of the shared drafter, which drafts it with its batch."""

    name = "sharing"
    cheap_drafts = False
    batch_min_draft = 3

    def __init__(self, shared: FakeShared) -> None:
        self.shared = shared
        self.alone = 0
        self._lease = None

    def start(self, prompt_ids, params):
        self._lease = self.shared.lease()

    def propose(self, context, k):
        self.alone += 1
        return Proposal([])

    def finish(self):
        lease, self._lease = self._lease, None
        if lease is not None:
            self.shared.give_back(lease)

    def shared_lease(self):
        return self._lease


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(0, eos_token_id=5)


@pytest.mark.parametrize("hostile", [False, True])
def test_shared_drafts_keep_every_output_equal_to_its_solo_run(tiny, hostile):
    references = [SpeculativeEngine(tiny, NoDrafter()).generate(p, params, top_logprobs=3)
                  for p, params in zip(PROMPTS, PARAMS, strict=True)]
    shared = FakeShared({tuple(p): r.output_ids for p, r in zip(PROMPTS, references, strict=True)}, hostile)
    scheduler = BatchScheduler(tiny, max_batch=4, max_rows=4)  # cap 0 with 4 running: the floor (3) applies
    sinks, drafters = [], []
    for prompt, params in zip(PROMPTS, PARAMS, strict=True):
        drafters.append(AheadDrafter(SharingDrafter(shared)))
        sinks.append(Sink())
        scheduler.submit(BatchRequest(prompt, params, drafters[-1], sinks[-1], top_logprobs=3))
    scheduler.run_until_idle()
    for ref, sink in zip(references, sinks, strict=True):
        assert compare(tiny, ref, sink, steps=False) == 0
    assert shared.calls and max(len(c) for c in shared.calls) == 4  # one call drafted all four
    # the first call drafted the newcomers (their prompts run in a forward of their own, uncapped); the
    # others ran under the row cap, never below the floor
    later = shared.calls[1:]
    assert all(k <= 3 for call in later for _, k in call) and any(k == 3 for call in later for _, k in call)
    assert all(len({seq for seq, _ in call}) == len(call) for call in shared.calls)  # a sequence per request
    assert sorted(shared.released) == [0, 1, 2, 3] and sorted(shared.free) == [0, 1, 2, 3]  # given back
    # drafted together, no request started a draft-ahead thread of its own; only the last one left, alone, may
    assert sum(d.counters["started"] == 0 for d in drafters) >= 3, [d.counters for d in drafters]
    assert not ahead_threads()
    steps = [len(s.value.steps) for s in sinks]
    if hostile:  # every hostile proposal was dropped whole and recorded
        assert all(any(st.rejected_proposal for st in s.value.steps) for s in sinks)
    else:  # perfect shared drafts: fewer steps than tokens, and blocks drafted ahead were used
        assert all(n < len(s.value.output_ids) for n, s in zip(steps, sinks, strict=True))
        assert shared.ahead_calls > 0 and sum(len(c) for c in shared.calls) < sum(steps)
    scheduler.stop()


def test_a_request_alone_drafts_with_its_own_drafter(tiny):
    shared = FakeShared({}, hostile=False)
    drafter = SharingDrafter(shared)
    sink = Sink()
    scheduler = BatchScheduler(tiny, max_batch=4)
    scheduler.submit(BatchRequest(PROMPTS[0], PARAMS[0], drafter, sink))
    scheduler.run_until_idle()
    assert sink.kind == "done" and not shared.calls and drafter.alone > 0


class BrokenSharing(SharingDrafter):
    def shared_lease(self):
        raise RuntimeError("no shared drafter here")


class BrokenShared(FakeShared):
    def propose_many(self, asks):
        raise RuntimeError("the shared drafter crashed")


def test_a_shared_drafter_that_fails_costs_drafts_never_a_request(tiny):
    references = [SpeculativeEngine(tiny, NoDrafter()).generate(p, params, top_logprobs=3)
                  for p, params in zip(PROMPTS[:2], PARAMS[:2], strict=True)]
    shared = BrokenShared({}, hostile=False)
    scheduler = BatchScheduler(tiny, max_batch=4)
    drafters = [AheadDrafter(SharingDrafter(shared)) for _ in range(2)]  # crashes in the batch's ahead thread too
    sinks = [Sink(), Sink()]
    for prompt, params, drafter, sink in zip(PROMPTS, PARAMS, drafters, sinks, strict=False):
        scheduler.submit(BatchRequest(prompt, params, drafter, sink, top_logprobs=3))
    scheduler.run_until_idle()
    for ref, sink in zip(references, sinks, strict=True):
        assert compare(tiny, ref, sink, steps=False) == 0
    assert all(d.inner.alone > 0 for d in drafters) and sorted(shared.free) == [0, 1, 2, 3]
    assert scheduler.stats["ahead_offered"] > 0 and scheduler.stats["ahead_used"] == 0
    scheduler.stop()
    assert not ahead_threads()


def test_a_shared_drafter_that_cannot_be_built_leaves_requests_drafting_alone(tiny):
    references = [SpeculativeEngine(tiny, NoDrafter()).generate(p, params, top_logprobs=3)
                  for p, params in zip(PROMPTS[:2], PARAMS[:2], strict=True)]
    scheduler = BatchScheduler(tiny, max_batch=4)
    drafters = [BrokenSharing(FakeShared({}, False)) for _ in range(2)]
    sinks = [Sink(), Sink()]
    for prompt, params, drafter, sink in zip(PROMPTS, PARAMS, drafters, sinks, strict=False):
        scheduler.submit(BatchRequest(prompt, params, drafter, sink, top_logprobs=3))
    scheduler.run_until_idle()
    for ref, sink in zip(references, sinks, strict=True):
        assert compare(tiny, ref, sink, steps=False) == 0
    assert all(d.alone > 0 for d in drafters)


@pytest.mark.model
def test_llamacpp_drafters_of_a_batch_share_one_context_and_change_nothing(default_model):
    from specguard.engine.factory import make_drafter

    questions = ["Write a short poem about the sea.", "Explain what a hash function is in two sentences.",
                 "List three uses of Python dictionaries.", "Give three tips for writing clear code."]
    prompts = [default_model.encode_chat([{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    references = [SpeculativeEngine(default_model, NoDrafter()).generate(p, params, top_logprobs=3) for p in prompts]
    scheduler = BatchScheduler(default_model, max_batch=4, max_rows=8)
    gguf = str(target_gguf(default_model))
    before = {id(d): dict(d.counters) for d in DRAFT_POOL.contexts(gguf)}
    sinks = []
    for prompt in prompts:
        sinks.append(Sink())
        scheduler.submit(BatchRequest(prompt, params, make_drafter("llamacpp", default_model, {}), sinks[-1],
                                      top_logprobs=3))
    scheduler.run_until_idle()
    flips = sum(compare(default_model, ref, sink, steps=False) for ref, sink in zip(references, sinks, strict=True))
    assert flips == 0
    # every request drafted through a sequence of one pooled context (others on this GGUF, e.g. of other
    # sizes from earlier tests, were not touched)
    (shared,) = [d for d in DRAFT_POOL.contexts(gguf) if d.counters != before.get(id(d))]
    old = before.get(id(shared), dict.fromkeys(shared.counters, 0))
    counters = {k: v - old[k] for k, v in shared.counters.items()}
    # lockstep: a decode carried several requests' tokens, and the drafts were mostly accepted
    assert counters["drafted"] > counters["decodes"] and counters["failures"] == 0, counters
    steps = sum(len(s.value.steps) for s in sinks)
    assert steps < sum(len(s.value.output_ids) for s in sinks) / 2, steps
    scheduler.stop()
