"""The llama.cpp drafting pool (specguard.drafters.llamacpp_batch, issue 23): one model per process,
contexts with a KV sequence per request, reused across requests with their cells cleared.

Counted through `LOADS` (model loads and context creations) and `DRAFT_POOL.stats()` (sequences lent),
never through timing. The target is a tiny random model written as an F32 GGUF (support.tiny_gguf),
so llama.cpp drafts what the target computes and each test runs in seconds; outputs are compared
with plain greedy decoding of the same target.
"""

from __future__ import annotations

import pytest
from engine.test_batching import Sink, compare
from support.tiny_gguf import tiny_gguf_model

from specguard.drafters.ahead import AheadDrafter
from specguard.drafters.base import NoDrafter
from specguard.drafters.llamacpp_batch import DRAFT_POOL, LOADS, DraftingPool
from specguard.engine.batching import BatchRequest, BatchScheduler
from specguard.engine.factory import make_drafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.llamacpp_runtime import target_gguf
from specguard.transcript import SamplingParams

PROMPTS = [[3, 9, 4, 7, 1], [12, 5, 5, 30, 2, 8], [40, 41, 42], [7] * 6 + [9], [60, 2, 61, 3],
           [11, 22, 33, 44], [5, 6], [90, 80, 70, 60, 50], [1, 1, 2, 3, 5, 8], [20, 19, 18], [31, 32]]
PARAMS = SamplingParams(max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return tiny_gguf_model(tmp_path_factory.mktemp("pool"), seed=1, vocab_size=96, scale=4.0)


@pytest.fixture(scope="module")
def references(target):
    return {tuple(p): SpeculativeEngine(target, NoDrafter()).generate(p, PARAMS, top_logprobs=3) for p in PROMPTS}


def run_batch(target, prompts, max_batch=8, should_stop=None):
    """`prompts` submitted at once to one scheduler, each with a default `llamacpp` drafter; (sinks, drafters)."""
    scheduler = BatchScheduler(target, max_batch=max_batch)
    drafters = []

    def factory():
        drafters.append(make_drafter("llamacpp", target, {"draft_ahead": True}))
        return drafters[-1]

    sinks = [Sink() for _ in prompts]
    for prompt, sink in zip(prompts, sinks, strict=True):
        scheduler.submit(BatchRequest(prompt, PARAMS, factory, sink, top_logprobs=3, should_stop=should_stop))
    scheduler.run_until_idle()
    scheduler.stop()
    return sinks, drafters


def started_threads(drafters) -> list[int]:
    return [d.counters["started"] for d in drafters if isinstance(d, AheadDrafter)]


def test_one_model_and_one_context_across_sequential_and_concurrent_requests(target, references):
    gguf = str(target_gguf(target))
    loads = dict(LOADS)
    for prompt in PROMPTS[:5]:  # one after the other
        (sink,), _ = run_batch(target, [prompt])
        assert compare(target, references[tuple(prompt)], sink, steps=False) == 0
    sinks, drafters = run_batch(target, PROMPTS[:6])  # six at once, drafted together
    for prompt, sink in zip(PROMPTS, sinks, strict=False):
        assert compare(target, references[tuple(prompt)], sink, steps=False) == 0
    assert LOADS["models"] - loads["models"] == 1  # the GGUF was loaded once
    assert LOADS["contexts"] - loads["contexts"] == 1  # and one context served all eleven requests
    assert len(DRAFT_POOL.contexts(gguf)) == 1 and DRAFT_POOL.stats()["leased"] == 0
    (drafting,) = DRAFT_POOL.contexts(gguf)
    assert all(drafting.cached(seq) == [] for seq in range(drafting.n_seqs))  # every sequence cleared
    # drafted together, they started no draft-ahead threads; only a request left alone at the end may
    assert sum(n > 0 for n in started_threads(drafters)) <= 1, started_threads(drafters)


def test_more_requests_than_sequences_open_a_bounded_number_of_contexts(target, references):
    gguf = str(target_gguf(target))
    run_batch(target, PROMPTS[:1])  # the model and the first context exist
    loads = dict(LOADS)
    sinks, _ = run_batch(target, PROMPTS[:10], max_batch=10)  # 10 requests, 8 sequences per context
    for prompt, sink in zip(PROMPTS, sinks, strict=False):
        assert compare(target, references[tuple(prompt)], sink, steps=False) == 0
    assert LOADS["models"] == loads["models"]  # no second load of the GGUF
    assert LOADS["contexts"] - loads["contexts"] == 1  # one more context for requests 9 and 10
    assert len(DRAFT_POOL.contexts(gguf)) == 1  # and only one context is kept idle afterwards
    assert DRAFT_POOL.stats()["leased"] == 0


def test_a_request_cancelled_mid_stream_gives_its_sequence_back(target, references):
    run_batch(target, PROMPTS[:1])  # warm: the pool's idle state
    idle = DRAFT_POOL.stats()
    cancel: list[bool] = []
    scheduler = BatchScheduler(target, max_batch=4)
    cancelled, other = Sink(), Sink()
    scheduler.submit(BatchRequest(PROMPTS[0], PARAMS, lambda: make_drafter("llamacpp", target, {}), cancelled,
                                  top_logprobs=3, should_stop=lambda: bool(cancel)))
    scheduler.submit(BatchRequest(PROMPTS[1], PARAMS, lambda: make_drafter("llamacpp", target, {}), other,
                                  top_logprobs=3))
    scheduler.step()
    assert DRAFT_POOL.stats()["leased"] == idle["leased"] + 2 and cancelled.kind is None
    cancel.append(True)
    scheduler.step()
    assert cancelled.kind == "done" and cancelled.value.finish_reason == "cancelled"
    assert DRAFT_POOL.stats()["leased"] == idle["leased"] + 1  # the cancelled request's sequence is back
    scheduler.run_until_idle()
    scheduler.stop()
    assert compare(target, references[tuple(PROMPTS[1])], other, steps=False) == 0
    assert DRAFT_POOL.stats() == idle  # no leak: the pool is back to its idle state


def test_solo_engines_draft_through_the_pool_too(target, references):
    run_batch(target, PROMPTS[:1])  # warm
    loads = dict(LOADS)
    for prompt in PROMPTS[:3]:
        drafter = make_drafter("llamacpp", target, {})
        transcript = SpeculativeEngine(target, drafter).generate(prompt, PARAMS, top_logprobs=3)
        assert transcript.output_ids == references[tuple(prompt)].output_ids
        assert transcript.metrics()["accepted_tokens"] > 0
    assert LOADS == loads and DRAFT_POOL.stats()["leased"] == 0  # no load, no context: the pooled one


def test_pool_lends_sequences_then_contexts_and_keeps_one_idle(target):
    gguf = str(target_gguf(target))
    pool = DraftingPool(seqs_per_context=2)
    loads = dict(LOADS)
    try:
        leases = [pool.lease(gguf, 1, 64) for _ in range(5)]
        assert pool.stats() == {"models": 1, "contexts": 3, "leased": 5}
        assert len({(id(lease.drafting), lease.seq) for lease in leases}) == 5  # never lent twice
        assert LOADS["models"] - loads["models"] == 1 and LOADS["contexts"] - loads["contexts"] == 3
        first = leases[0]
        drafted = first.drafting.draft(first.seq, PROMPTS[0], 4, lambda logits, done: (int(logits.argmax()), True))
        assert len(drafted) == 4 and first.drafting.cached(first.seq) == PROMPTS[0] + drafted[:3]
        for lease in leases:
            pool.give_back(lease)
        pool.give_back(leases[0])  # given back twice: ignored
        assert pool.stats() == {"models": 1, "contexts": 1, "leased": 0}  # idle contexts beyond one were closed
        again = pool.lease(gguf, 1, 64)
        assert again.drafting.cached(again.seq) == []  # cleared when it was given back
        assert pool.lease(gguf, 2, 64).drafting is not again.drafting  # other threads: another context
        assert LOADS["models"] - loads["models"] == 1
    finally:
        pool.clear()
    assert pool.stats() == {"models": 0, "contexts": 0, "leased": 0}
