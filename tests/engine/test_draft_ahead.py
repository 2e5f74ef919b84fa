"""Draft-ahead (specguard.drafters.ahead): the drafter drafts the next block in a background thread.

Whatever the background does (slow, wrong, raising, stopped half-way), outputs equal plain decoding;
a block is reused only when the target accepted the whole draft and the guessed bonus token; the
background thread is stopped and joined by finish() on completion, cancellation and errors. No test
depends on timing: the background is either joined before anything is asserted or gated by the test.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.tiny import tiny_model

from specguard.drafters.ahead import THREAD_NAME, AheadDrafter, with_draft_ahead
from specguard.drafters.base import Drafter, NoDrafter, Proposal
from specguard.drafters.ngram import NgramDrafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import UsageError
from specguard.transcript import SamplingParams

VOCAB = 64
PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [10, 20, 30, 40, 50, 60]]
GREEDY = SamplingParams(max_tokens=32, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=32, temperature=0.9, top_p=0.95, seed=13, ignore_eos=True)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; with two, a busy second core (CI) slows them 30x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=21, vocab_size=VOCAB, scale=4.0)


_plain: dict = {}


def plain(target, prompt, params):
    key = (tuple(prompt), params)
    if key not in _plain:
        _plain[key] = SpeculativeEngine(target, NoDrafter()).generate(prompt, params).output_ids
    return _plain[key]


def ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


class Oracle(Drafter):
    """Proposes the target's own output (known in advance), corrupting every `corrupt`-th token.

    Records every call (thread name, context, k) and checks it is never used by two threads at once."""

    name = "oracle"
    max_draft = 16

    def __init__(self, prompt, reference, corrupt=0, delay=0.0, fail_in_background=False):
        self.full = list(prompt) + list(reference)
        self.corrupt = corrupt
        self.delay = delay
        self.fail_in_background = fail_in_background
        self.calls: list[tuple[str, list[int], int]] = []
        self.finished = 0
        self.alive_at_finish: list[threading.Thread] = []
        self._busy = threading.Lock()
        self.overlapping = False

    def propose(self, context, k):
        if not self._busy.acquire(blocking=False):
            self.overlapping = True  # two threads inside the drafter at once: a bug
            self._busy.acquire()
        try:
            thread = threading.current_thread().name
            self.calls.append((thread, list(context), k))
            if self.delay:
                time.sleep(self.delay)
            if self.fail_in_background and thread == THREAD_NAME:
                raise RuntimeError("background drafter crashed")
            n = len(context)
            if self.full[:n] == list(context):
                tokens = self.full[n : n + k]
            else:
                tokens = [(context[-1] * 7 + 3 + i) % VOCAB for i in range(k)]
            if self.corrupt:
                tokens = [(t + 1) % VOCAB if (n + i) % self.corrupt == 0 else t for i, t in enumerate(tokens)]
            return Proposal(tokens)
        finally:
            self._busy.release()

    def finish(self):
        self.finished += 1
        self.alive_at_finish = ahead_threads()


class Garbage(Drafter):
    """Slow and wrong: proposes tokens the target rarely picks."""

    name = "garbage"

    def propose(self, context, k):
        time.sleep(0.002)
        return Proposal([(sum(context) + i) % VOCAB for i in range(k)])


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("wait", ["all", "ready"])
def test_outputs_identical_to_plain_whatever_the_background_does(target, params, wait):
    for prompt in PROMPTS:
        ref = plain(target, prompt, params)
        inners = {
            "oracle": Oracle(prompt, ref),
            "corrupted": Oracle(prompt, ref, corrupt=5),
            "slow-wrong": Garbage(),
            "ngram": NgramDrafter(),
            "background-raises": Oracle(prompt, ref, fail_in_background=True),
        }
        for label, inner in inners.items():
            drafter = AheadDrafter(inner, wait=wait)
            transcript = SpeculativeEngine(target, drafter).generate(prompt, params)
            assert transcript.output_ids == ref, (label, wait)
            assert transcript.drafter == inner.name and all(s.rejected_proposal is None for s in transcript.steps)
            assert not ahead_threads(), label
            if isinstance(inner, Oracle):
                assert not inner.overlapping, "the drafter was used by two threads at once"
                assert inner.finished == 1 and inner.alive_at_finish == [], "finish() ran before the thread ended"
    perfect = Oracle(PROMPTS[0], plain(target, PROMPTS[0], params))
    drafter = AheadDrafter(perfect, wait="all")
    SpeculativeEngine(target, drafter).generate(PROMPTS[0], params)
    assert drafter.counters["reused"] > 0 and drafter.counters["tokens_reused"] > 0
    background = [c for c in perfect.calls if c[0] == THREAD_NAME]
    assert background, "blocks were drafted in the background thread"
    crashing = Oracle(PROMPTS[0], plain(target, PROMPTS[0], params), fail_in_background=True)
    drafter = AheadDrafter(crashing)
    SpeculativeEngine(target, drafter).generate(PROMPTS[0], params)
    assert drafter.counters["failed"] > 0 and drafter.counters["reused"] == 0


def settle(drafter: AheadDrafter) -> None:
    """Wait until the current background block is drafted (so the test can look at the calls)."""
    if drafter._job is not None and drafter._job.thread is not None:
        drafter._job.thread.join()


def test_block_reused_only_after_full_acceptance_and_the_right_bonus():
    prompt = [1, 2, 3]
    inner = Oracle(prompt, list(range(10, 40)))
    drafter = AheadDrafter(inner, wait="all")
    drafter.start(prompt, SamplingParams(max_tokens=64))
    try:
        d = drafter.propose(prompt, 3).tokens
        assert d == [10, 11, 12] and inner.calls[0][0] != THREAD_NAME
        settle(drafter)
        assert inner.calls[1] == (THREAD_NAME, prompt + d, 3 + 1 + 1)  # the guessed bonus + (k+1) tokens
        # full acceptance, bonus 13 = the background's guess: the block comes from the background
        c1 = prompt + d + [13]
        assert drafter.propose(c1, 4).tokens == [14, 15, 16, 17]
        assert len(inner.calls) >= 2 and all(c[0] == THREAD_NAME for c in inner.calls[1:])
        assert drafter.counters["reused"] == 1 and drafter.counters["sync"] == 1
        settle(drafter)
        assert inner.calls[2][1] == c1 + [14, 15, 16, 17]  # and the next block is drafted ahead from there
        # a rejection at the 2nd token (the target emitted 99 instead of 15): the block is discarded
        # and the drafter drafts synchronously from exactly the verifier's context
        c2 = c1 + [14, 99]
        p2 = drafter.propose(c2, 3).tokens
        assert inner.calls[3] == ("MainThread", c2, 3)
        assert drafter.counters["discarded"] == 1 and drafter.counters["sync"] == 2
        # full acceptance but another bonus than the background's guess: discarded as well
        settle(drafter)
        base = c2 + p2
        assert inner.calls[4] == (THREAD_NAME, base, 3 + 1 + 1)
        guess = (base[-1] * 7 + 3) % VOCAB  # what the Oracle drafts off its reference path
        drafter.propose(base + [(guess + 1) % VOCAB], 2)
        assert drafter.counters["discarded"] == 2 and drafter.counters["sync"] == 3
        assert drafter.counters["reused"] == 1
    finally:
        drafter.finish()
    assert inner.finished == 1 and not ahead_threads()


class Gated(Drafter):
    """A drafter whose background tokens are released one by one by the test (propose_until)."""

    name = "gated"
    max_draft = 16

    def __init__(self):
        self.allowed = 0
        self.produced = threading.Condition()
        self.count = 0
        self.calls: list[tuple[str, list[int], int]] = []

    def propose(self, context, k):
        self.calls.append((threading.current_thread().name, list(context), k))
        return Proposal([(context[-1] + 1 + i) % VOCAB for i in range(k)])

    def propose_until(self, context, k, keep_going):
        self.calls.append((threading.current_thread().name, list(context), k))
        drafted: list[int] = []
        deadline = time.monotonic() + 60  # a safety net against a hung test, never reached when correct
        while len(drafted) < k:
            while self.allowed <= len(drafted):
                if not keep_going(drafted) or time.monotonic() > deadline:
                    return Proposal(drafted)
                time.sleep(0.001)
            drafted.append((context[-1] + 1 + len(drafted)) % VOCAB)
            with self.produced:
                self.count = len(drafted)
                self.produced.notify_all()
            if not keep_going(drafted):
                break
        return Proposal(drafted)

    def wait_for(self, n):
        with self.produced:
            assert self.produced.wait_for(lambda: self.count >= n, timeout=60)


def test_ready_mode_takes_what_is_drafted_and_tops_up():
    prompt = [5, 6]
    inner = Gated()
    drafter = AheadDrafter(inner, wait="ready", min_tokens=2)
    drafter.start(prompt, SamplingParams(max_tokens=64))
    try:
        d = drafter.propose(prompt, 4).tokens  # synchronous (nothing ahead yet)
        assert d == [7, 8, 9, 10]
        inner.allowed = 4  # the background drafts the guess (11) and 3 tokens, then waits
        inner.wait_for(4)
        inner.count, inner.allowed = 0, 1  # the job stays blocked at 4; the next one will draft 1
        block = drafter.propose(prompt + d + [11], 8).tokens
        assert block == [12, 13, 14], "exactly what was drafted when the target came back"
        assert drafter.counters["topped_up"] == 0
        assert inner.calls[0] == ("MainThread", prompt, 4) and inner.calls[1] == (THREAD_NAME, prompt + d, 6)
        # only the guess is ready: the block is continued synchronously up to min_tokens
        # only the guess (15) of the next background job is drafted (allowed = 1 since the last step)
        c = prompt + d + [11] + block
        inner.wait_for(1)
        calls = len(inner.calls)
        assert drafter.propose(c + [15], 8).tokens == [16, 17]
        assert inner.calls[calls] == ("MainThread", c + [15], 2)
        assert drafter.counters["topped_up"] == 1 and drafter.counters["reused"] == 2
    finally:
        inner.allowed = 10**6
        drafter.finish()
    assert not ahead_threads()


def test_a_wrong_guess_stops_the_background_block_at_once():
    prompt = [5, 6]
    inner = Gated()
    drafter = AheadDrafter(inner, wait="all")  # would wait for the whole block if the guess were right
    drafter.start(prompt, SamplingParams(max_tokens=64))
    try:
        d = drafter.propose(prompt, 2).tokens
        inner.allowed = 1  # only the guess (9) is drafted; the test never releases more
        inner.wait_for(1)
        drafter.propose(prompt + d + [30], 2)  # the target's bonus is 30: the block stops and is dropped
        assert drafter.counters["discarded"] == 1
    finally:
        inner.allowed = 10**6
        drafter.finish()
    assert not ahead_threads()


def test_cancellation_errors_and_early_close_join_the_thread(target):
    prompt, params = PROMPTS[0], GREEDY
    ref = plain(target, prompt, params)

    # cancelled by the server (should_stop) after two steps
    inner = Oracle(prompt, ref, delay=0.01)
    steps = []
    transcript = SpeculativeEngine(target, AheadDrafter(inner)).generate(
        prompt, params, on_step=steps.append, should_stop=lambda: len(steps) >= 2)
    assert transcript.finish_reason == "cancelled" and transcript.output_ids == ref[: len(transcript.output_ids)]
    assert inner.finished == 1 and inner.alive_at_finish == [] and not ahead_threads()

    # the consumer raises in the middle of the stream
    inner = Oracle(prompt, ref, delay=0.01)

    def boom(step):
        raise KeyError("client went away")

    with pytest.raises(KeyError):
        SpeculativeEngine(target, AheadDrafter(inner)).generate(prompt, params, on_step=boom)
    assert inner.finished == 1 and inner.alive_at_finish == [] and not ahead_threads()

    # the consumer stops iterating and closes the stream (a disconnected streaming client)
    inner = Oracle(prompt, ref, delay=0.01)
    stream = SpeculativeEngine(target, AheadDrafter(inner)).stream(prompt, params)
    next(stream)
    stream.close()
    assert inner.finished == 1 and inner.alive_at_finish == [] and not ahead_threads()

    # many requests: no thread accumulates
    for prompt in PROMPTS:
        SpeculativeEngine(target, AheadDrafter(Oracle(prompt, plain(target, prompt, params), corrupt=4))).generate(
            prompt, params)
    assert not ahead_threads()


def test_no_background_block_past_the_request_budget():
    prompt = [1, 2, 3]
    inner = Oracle(prompt, list(range(10, 40)))
    drafter = AheadDrafter(inner)
    drafter.start(prompt, SamplingParams(max_tokens=5))
    try:
        drafter.propose(prompt, 3)  # after these 3 and a bonus, 1 token is left: the engine asks for no draft
        assert drafter._job is None and drafter.counters["started"] == 0
    finally:
        drafter.finish()


def test_options(target):
    inner = NgramDrafter()
    assert with_draft_ahead(inner, {}) is inner
    assert with_draft_ahead(inner, {"draft_ahead": False}) is inner
    wrapped = with_draft_ahead(inner, {"draft_ahead": True, "ahead_wait": "ready", "ahead_min_tokens": "3",
                                       "ahead_cpus": "0"})
    assert isinstance(wrapped, AheadDrafter) and wrapped.wait == "ready" and wrapped.min_tokens == 3
    assert wrapped.cpus == [0] and wrapped.name == "ngram" and wrapped.trusted is True and wrapped.cheap_drafts
    assert with_draft_ahead(wrapped, {"draft_ahead": True}) is wrapped  # never wrapped twice
    assert wrapped.describe()["draft_ahead"]["wait"] == "ready"
    for bad in ({"draft_ahead": "maybe"}, {"draft_ahead": True, "ahead_wait": "never"},
                {"draft_ahead": True, "ahead_min_tokens": 0}, {"draft_ahead": True, "ahead_cpus": [4096]},
                {"draft_ahead": True, "ahead_cpus": "a,b"}):
        with pytest.raises(UsageError) as err:
            with_draft_ahead(inner, bad)
        assert err.value.field in ("draft_ahead", "ahead_wait", "ahead_min_tokens", "ahead_cpus"), bad
    # pinned to CPU 0: still identical
    ref = plain(target, PROMPTS[1], GREEDY)
    drafter = AheadDrafter(Oracle(PROMPTS[1], ref, corrupt=6), cpus=[0])
    assert SpeculativeEngine(target, drafter).generate(PROMPTS[1], GREEDY).output_ids == ref
    assert not ahead_threads()


def test_llamacpp_drafter_with_draft_ahead_on_a_wrong_model():
    # cheap: a random target with SmolLM2's vocabulary; llama.cpp drafts with SmolLM2's GGUF (mostly rejected)
    from specguard.drafters.llamacpp import LlamaCppDrafter
    from specguard.engine.factory import make_drafter
    from specguard.models import resolve

    target = tiny_model(seed=5, vocab_size=49152)
    _, gguf = resolve("smollm2-135m")
    prompt = [1, 504, 3520, 314, 253, 1345, 30, 2]
    for params in (SamplingParams(max_tokens=16, ignore_eos=True),
                   SamplingParams(max_tokens=16, temperature=0.8, seed=3, ignore_eos=True)):
        for wait in ("all", "ready"):
            drafter = make_drafter("llamacpp", target, {"gguf": str(gguf), "draft_ahead": True, "ahead_wait": wait})
            assert isinstance(drafter, AheadDrafter) and isinstance(drafter.inner, LlamaCppDrafter)
            assert drafter.max_draft == 32 and drafter.trusted is False
            transcript = SpeculativeEngine(target, drafter).generate(prompt, params)
            assert transcript.output_ids == plain(target, prompt, params)
            assert drafter.counters["started"] > 0 and drafter.inner._lease is None  # given back to the pool
            assert not ahead_threads()


def test_llamacpp_drafter_drafts_ahead_by_default_only_with_a_spare_cpu(monkeypatch):
    from specguard import defaults
    from specguard.engine.factory import make_drafter
    from specguard.models import resolve

    target = tiny_model(seed=5, vocab_size=49152)
    _, gguf = resolve("smollm2-135m")
    for cpus, ahead in ((1, False), (2, True), (16, True)):
        monkeypatch.setattr(defaults, "available_cpus", lambda c=cpus: c)
        drafter = make_drafter("llamacpp", target, {"gguf": str(gguf)})
        assert isinstance(drafter, AheadDrafter) is ahead, cpus
    off = make_drafter("llamacpp", target, {"gguf": str(gguf), "draft_ahead": False})
    assert not isinstance(off, AheadDrafter)  # the operator's choice wins over the default


@pytest.mark.model
def test_llamacpp_draft_ahead_identical_on_the_default_model(default_model):
    from specguard.engine.factory import make_drafter

    prompt = default_model.encode_chat([{"role": "user", "content": "List three uses of Python dictionaries."}])
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    drafter = make_drafter("llamacpp", default_model, {"draft_ahead": True})
    transcript = SpeculativeEngine(default_model, drafter).generate(prompt, params)
    assert transcript.output_ids == plain(default_model, prompt, params)
    # llama.cpp agrees with the target on most greedy tokens: some blocks drafted ahead were used
    assert drafter.counters["reused"] > 0, drafter.counters
    assert not ahead_threads()
