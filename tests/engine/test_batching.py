"""Continuous batching (specguard.engine.batching) gives every request exactly its solo result.

Each request's output, finish reason and steps must equal its solo `SpeculativeEngine` run token
for token; its logprobs may move only by fp32 last bits (batching multiplies matrices of other
shapes) and must pass the consensus re-check (`consensus.rederive.judge`). A differing token is a
near-tie flip only if the solo run's margin there is below NEAR_TIE_EPSILON; on these models
there must be none.
"""

from __future__ import annotations

import threading

import pytest
from support.hostile import MalformedDrafter, ScriptedDrafter
from support.tiny import tiny_model

from specguard.consensus.rederive import DEFAULT_LOGPROB_TOLERANCE, judge
from specguard.engine.batching import BatchRequest, BatchScheduler
from specguard.engine.factory import make_drafter
from specguard.engine.sampling import NEAR_TIE_EPSILON
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import RequestError
from specguard.transcript import SamplingParams


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(0, eos_token_id=5)


class StopAfter:
    """should_stop that cancels once `n` steps were seen (counted through on_step): deterministic."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_step(self, step) -> None:
        self.seen += 1

    def __call__(self) -> bool:
        return self.seen >= self.n


# (drafter, prompt, params, cancel after n steps or None)
MIXED = [
    ("none", [1, 2, 3, 1, 2, 3, 1, 2], SamplingParams(max_tokens=40), None),
    ("ngram", [1, 2, 3, 1, 2, 3, 1, 2], SamplingParams(max_tokens=40), None),
    ("ngram", [7, 8, 9, 10, 11, 12], SamplingParams(max_tokens=33, temperature=0.8, seed=7, top_k=20), None),
    ("none", [4] * 23 + [9, 3], SamplingParams(max_tokens=50, ignore_eos=True, temperature=1.0, seed=3, top_p=0.9),
     None),
    ("ngram", [7, 8, 9, 10, 11, 12], SamplingParams(max_tokens=30, stop=("<9>",)), None),
    ("none", [30, 31], SamplingParams(max_tokens=3), None),
    ("ngram", list(range(10, 50)), SamplingParams(max_tokens=60, ignore_eos=True), 4),  # cancelled midway
    ("ngram", [2, 40, 2, 40, 2], SamplingParams(max_tokens=25, temperature=0.7, seed=11), None),
]


def solo(model, drafter: str, prompt, params, cancel_after, top_n: int = 3):
    stop = StopAfter(cancel_after) if cancel_after else None
    engine = SpeculativeEngine(model, make_drafter(drafter, model, {}))
    return engine.generate(prompt, params, top_logprobs=top_n, on_step=stop.on_step if stop else None,
                           should_stop=stop)


class Sink:
    """Collects one request's items."""

    def __init__(self) -> None:
        self.events, self.kind, self.value = [], None, None
        self.finished = threading.Event()

    def __call__(self, kind, value) -> None:
        if kind == "event":
            assert self.kind is None, "event after the end"
            self.events.append(value)
        else:
            assert self.kind is None, "two terminal items"
            self.kind, self.value = kind, value
            self.finished.set()


def submit(scheduler, model, drafter, prompt, params, cancel_after, top_n: int = 3) -> Sink:
    sink = Sink()
    stop = StopAfter(cancel_after) if cancel_after else None
    scheduler.submit(BatchRequest(prompt, params, make_drafter(drafter, model, {}), sink, top_logprobs=top_n,
                                  on_step=stop.on_step if stop else None, should_stop=stop))
    return sink


def compare(model, reference, sink: Sink, steps: bool = True) -> int:
    """Assert `sink`'s transcript equals the solo `reference`; return the near-tie flips (0 or 1).

    With `steps`, the steps (drafts, accepted counts) must be equal too."""
    assert sink.kind == "done", sink.value
    got = sink.value
    # the streamed events add up to the transcript
    assert [r.token_id for e in sink.events for r in e.tokens] == got.output_ids
    if got.output_ids != reference.output_ids:
        pairs = zip(got.output_ids, reference.output_ids, strict=False)
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        assert first is not None, "one output is a strict prefix of the other: not a near-tie flip"
        assert reference.tokens[first].margin < NEAR_TIE_EPSILON, (
            f"position {first}: batched {got.output_ids[first]} vs solo {reference.output_ids[first]} with margin "
            f"{reference.tokens[first].margin}")
        return 1
    assert got.finish_reason == reference.finish_reason and got.text == reference.text
    assert got.params == reference.params
    if steps:
        assert [(s.drafted, s.accepted, s.emitted, s.rejected_proposal) for s in got.steps] == \
            [(s.drafted, s.accepted, s.emitted, s.rejected_proposal) for s in reference.steps]
    for a, b in zip(got.tokens, reference.tokens, strict=True):
        assert a.position == b.position and a.token_id == b.token_id
        assert abs(a.logprob - b.logprob) < 1e-4
        assert [t for t, _ in a.top] == [t for t, _ in b.top] or min(a.margin, b.margin) < NEAR_TIE_EPSILON
        assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top, strict=True)) < 1e-4
    return 0


def test_eight_mixed_requests_equal_their_solo_runs(tiny):
    references = [solo(tiny, d, p, params, c) for d, p, params, c in MIXED]
    scheduler = BatchScheduler(tiny, max_batch=8)
    # five start together, three join while the others run (continuous batching)
    sinks = [submit(scheduler, tiny, d, p, params, c) for d, p, params, c in MIXED[:5]]
    for _ in range(3):
        assert scheduler.step()
    sinks += [submit(scheduler, tiny, d, p, params, c) for d, p, params, c in MIXED[5:]]
    scheduler.run_until_idle()
    assert scheduler.stats["batched_rows"] > scheduler.stats["batched_forwards"]  # requests shared forwards
    flips = sum(compare(tiny, ref, sink) for ref, sink in zip(references, sinks, strict=True))
    assert flips == 0
    cancelled = sinks[6].value
    assert cancelled.finish_reason == "cancelled" and len(cancelled.steps) == 4
    assert not scheduler.running and not scheduler.store.allocated  # the KV store is released when idle
    for sink in sinks:  # and the consensus re-check accepts every batched transcript
        if sink.value.finish_reason != "cancelled":
            verdict = judge(tiny, sink.value)
            assert verdict.accepted, verdict.reasons
            assert verdict.stats["near_ties"] == 0 and verdict.stats["logprob_errors"] == 0
            assert verdict.stats["max_logprob_error"] <= DEFAULT_LOGPROB_TOLERANCE


def test_small_batch_queues_compacts_slots_and_keeps_results(tiny):
    """max_batch 3 with 8 requests: requests wait, leave in any order and new ones take freed slots."""
    references = [solo(tiny, d, p, params, c) for d, p, params, c in MIXED]
    scheduler = BatchScheduler(tiny, max_batch=3)
    sinks = [submit(scheduler, tiny, d, p, params, c) for d, p, params, c in MIXED]
    scheduler.run_until_idle()
    assert sum(compare(tiny, ref, sink) for ref, sink in zip(references, sinks, strict=True)) == 0
    assert scheduler.stats["prefills"] == len(MIXED)


def test_row_cap_shortens_drafts_but_not_outputs(tiny):
    """max_rows 1: no draft after the first step, so steps differ; outputs and records stay the solo ones."""
    references = [solo(tiny, d, p, params, None) for d, p, params, _ in MIXED]
    scheduler = BatchScheduler(tiny, max_batch=8, max_rows=1)
    sinks = [submit(scheduler, tiny, d, p, params, None) for d, p, params, _ in MIXED]
    scheduler.run_until_idle()
    assert sum(compare(tiny, ref, sink, steps=False) for ref, sink in zip(references, sinks, strict=True)) == 0
    assert any(s.drafted for s in references[1].steps[1:])  # alone, the ngram drafter drafts after step 0
    for sink in sinks:
        assert not any(s.drafted for s in sink.value.steps[1:])


def test_bad_request_fails_alone(tiny):
    scheduler = BatchScheduler(tiny, max_batch=4)
    good = submit(scheduler, tiny, "ngram", [1, 2, 3, 1, 2], SamplingParams(max_tokens=20), None)
    bad = submit(scheduler, tiny, "none", [1, 999], SamplingParams(max_tokens=5), None)
    bad_top = submit(scheduler, tiny, "none", [1, 2], SamplingParams(max_tokens=5), None, top_n=99)
    scheduler.run_until_idle()
    assert bad.kind == "error" and isinstance(bad.value, RequestError) and bad.value.field == "prompt"
    assert bad_top.kind == "error" and bad_top.value.field == "top_logprobs"
    compare(tiny, solo(tiny, "ngram", [1, 2, 3, 1, 2], SamplingParams(max_tokens=20), None), good)


def test_failing_step_hook_fails_only_its_request(tiny):
    scheduler = BatchScheduler(tiny, max_batch=4)

    def boom(step):
        if step.index == 2:
            raise RequestError("refused by a plugin", field="step")

    failing = Sink()
    scheduler.submit(BatchRequest([3, 4, 5], SamplingParams(max_tokens=30), make_drafter("none", tiny, {}), failing,
                                  on_step=boom))
    others = [submit(scheduler, tiny, d, p, params, c) for d, p, params, c in MIXED[:3]]
    scheduler.run_until_idle()
    assert failing.kind == "error" and "refused" in str(failing.value) and len(failing.events) == 2
    for (d, p, params, c), sink in zip(MIXED[:3], others, strict=True):
        assert compare(tiny, solo(tiny, d, p, params, c), sink) == 0


def test_scheduler_thread_serves_concurrent_submitters(tiny):
    """The server path: the scheduler's own thread, requests submitted from several threads."""
    references = [solo(tiny, d, p, params, c) for d, p, params, c in MIXED[:4]]
    scheduler = BatchScheduler(tiny, max_batch=8)
    scheduler.start()
    try:
        sinks: list[Sink | None] = [None] * 4

        def client(i: int) -> None:
            d, p, params, c = MIXED[i]
            sinks[i] = submit(scheduler, tiny, d, p, params, c)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for sink in sinks:
            assert sink is not None and sink.finished.wait(300)
        for ref, sink in zip(references, sinks, strict=True):
            assert compare(tiny, ref, sink) == 0
    finally:
        scheduler.stop()
    with pytest.raises(RuntimeError):
        scheduler.submit(BatchRequest([1], SamplingParams(max_tokens=1), make_drafter("none", tiny, {}), Sink()))


@pytest.mark.model
def test_default_model_batched_greedy_equals_solo(default_model):
    """Four short greedy chat-sized prompts on SmolLM2-135M, batched vs solo (drafters none and ngram)."""
    tok = default_model.tokenizer
    texts = ["The capital of France is", "List three colours:", "def fibonacci(n):",
             "Water boils at a temperature of"]
    cases = [("ngram" if i % 2 else "none", tok.encode(t), SamplingParams(max_tokens=16)) for i, t in enumerate(texts)]
    references = [solo(default_model, d, p, params, None) for d, p, params in cases]
    scheduler = BatchScheduler(default_model, max_batch=4)
    sinks = [submit(scheduler, default_model, d, p, params, None) for d, p, params in cases]
    scheduler.run_until_idle()
    flips = sum(compare(default_model, ref, sink) for ref, sink in zip(references, sinks, strict=True))
    assert flips == 0


class SlowScripted(ScriptedDrafter):
    """A drafter that 'costs time' (cheap_drafts False): the scheduler asks such drafters in parallel."""

    name = "slow-scripted"
    cheap_drafts = False

    def __init__(self, prompt_len: int, continuation: list[int]) -> None:
        super().__init__(prompt_len, continuation)
        self.threads: set[str] = set()

    def propose(self, context, k):
        self.threads.add(threading.current_thread().name)
        return super().propose(context, k)


def test_slow_and_hostile_drafters_propose_in_parallel_and_change_nothing(tiny):
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [7, 8, 9, 10, 11, 12], [30, 31]]
    params = SamplingParams(max_tokens=30)
    plain = [SpeculativeEngine(tiny).generate(p, params) for p in prompts]
    drafters = [
        lambda i: SlowScripted(len(prompts[i]), plain[i].output_ids),  # perfect
        lambda i: SlowScripted(len(prompts[i]), [(t + 1) % 64 for t in plain[i].output_ids]),  # always wrong
        lambda i: MalformedDrafter(tiny.vocab_size),  # hostile: malformed proposals, raises
    ]
    references = [SpeculativeEngine(tiny, drafters[i](i)).generate(p, params, top_logprobs=3)
                  for i, p in enumerate(prompts)]
    scheduler = BatchScheduler(tiny, max_batch=4)
    made = [drafters[i](i) for i in range(3)]
    sinks = []
    for p, drafter in zip(prompts, made, strict=True):
        sink = Sink()
        scheduler.submit(BatchRequest(p, params, drafter, sink, top_logprobs=3))
        sinks.append(sink)
    scheduler.run_until_idle()
    scheduler.stop()
    for ref, sink, alone in zip(references, sinks, plain, strict=True):
        assert compare(tiny, ref, sink) == 0
        assert sink.value.output_ids == alone.output_ids  # whatever the drafter proposed
    assert any(name.startswith("specguard-draft") for name in made[0].threads)  # asked from the draft pool
    assert sum(1 for s in sinks[2].value.steps if s.rejected_proposal) > 0


def test_eager_attention_model_gets_an_additive_mask():
    """A model configured for eager attention (mask added to the scores) batches correctly too."""
    model = tiny_model(1, eos_token_id=5)
    model.model.set_attn_implementation("eager")
    assert model.model.config._attn_implementation == "eager"
    cases = MIXED[:4]
    references = [solo(model, d, p, params, c) for d, p, params, c in cases]
    scheduler = BatchScheduler(model, max_batch=4)
    sinks = [submit(scheduler, model, d, p, params, c) for d, p, params, c in cases]
    scheduler.run_until_idle()
    assert sum(compare(model, ref, sink) for ref, sink in zip(references, sinks, strict=True)) == 0
