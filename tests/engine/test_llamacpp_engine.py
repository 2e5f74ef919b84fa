"""The `llamacpp` engine: llama.cpp on the default model's GGUF as the target.

The contract suite (test_contract.py) already runs it on tiny F32 GGUFs; these tests use the real
default model (Q4 GGUF, `model` mark) and compare with llama.cpp's own decoding. Short outputs
(≤ 32 tokens) keep them quick.
"""

from __future__ import annotations

import hashlib
import math

import pytest
from support.tiny import tiny_model

from specguard.drafters.base import NoDrafter
from specguard.drafters.ngram import NgramDrafter
from specguard.engine.factory import make_engine
from specguard.engine.llamacpp import GumbelLogitsProcessor, LlamaCppEngine
from specguard.errors import RequestError, UsageError
from specguard.llamacpp_runtime import target_gguf
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node
from specguard.transcript import SamplingParams

QUESTION = "Write a short poem about the sea."
N = 24
GREEDY = SamplingParams(max_tokens=N, ignore_eos=True)


def sampled(seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=seed, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(default_model) -> LlamaCppEngine:
    built = make_engine(default_model, NoDrafter(), "llamacpp", {"threads": 1})
    assert isinstance(built, LlamaCppEngine)
    return built


@pytest.fixture(scope="module")
def prompt(default_model) -> list[int]:
    return default_model.encode_chat([{"role": "user", "content": QUESTION}])


def llama_generate(engine: LlamaCppEngine, prompt: list[int], n: int, **kwargs) -> list[int]:
    """llama.cpp's own decoding loop (`Llama.generate`, temperature 0, no repeat penalty), n tokens."""
    llama = engine.acquire()  # a context with the engine's settings
    try:
        llama.reset()
        out = []
        for token in llama.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True, **kwargs):
            out.append(int(token))
            if len(out) == n:
                break
        return out
    finally:
        engine.release(llama)


# -- no model needed ---------------------------------------------------------------------------


def test_a_target_without_gguf_and_an_unknown_engine_are_usage_errors(tmp_path):
    lm = tiny_model(seed=1, vocab_size=64)
    with pytest.raises(UsageError, match="GGUF") as err:
        make_engine(lm, NoDrafter(), "llamacpp", {})
    assert err.value.field == "gguf"
    with pytest.raises(UsageError, match="GGUF file not found"):
        make_engine(lm, NoDrafter(), "llamacpp", {"gguf": str(tmp_path / "missing.gguf")})
    with pytest.raises(UsageError, match="unknown engine") as err:  # a node fails at start, naming the engines
        Node(lm, ServeConfig(drafter="none", home=tmp_path, engine="nope"))
    assert {"specguard", "builtin", "llamacpp"} <= set(err.value.expected)


# -- the default model -------------------------------------------------------------------------


@pytest.mark.model
def test_greedy_is_llama_cpps_own_greedy_decoding(engine, prompt):
    t = engine.generate(prompt, GREEDY)
    assert len(t.output_ids) == N and t.finish_reason == "length"
    assert t.output_ids == llama_generate(engine, prompt, N)
    assert engine.generate(prompt, GREEDY).output_ids == t.output_ids  # the same schedule every request
    assert t.engine == "llamacpp" and not t.rederivable and t.drafter == "none"


@pytest.mark.model
def test_the_drafter_is_ignored(default_model, engine, prompt):
    with_ngram = make_engine(default_model, NgramDrafter(), "llamacpp", {"threads": 1})
    t = with_ngram.generate(prompt, GREEDY)
    assert t.output_ids == engine.generate(prompt, GREEDY).output_ids
    assert all(not s.drafted and len(s.emitted) == 1 for s in t.steps)


@pytest.mark.model
def test_seeded_sampling_is_reproducible_and_is_the_logits_processors_choice(engine, prompt):
    a = engine.generate(prompt, sampled(7))
    assert a.params.seed == 7 and not a.rederivable
    assert engine.generate(prompt, sampled(7)).output_ids == a.output_ids
    assert engine.generate(prompt, sampled(8)).output_ids != a.output_ids
    # llama.cpp's own loop with specguard's rule as its logits processor makes the same choices
    import llama_cpp

    processor = GumbelLogitsProcessor(sampled(7), len(prompt))
    assert llama_generate(engine, prompt, 16, logits_processor=llama_cpp.LogitsProcessorList([processor])) == \
        a.output_ids


@pytest.mark.model
def test_logprobs_are_finite_and_top_is_sorted(engine, prompt):
    t = engine.generate(prompt, GREEDY, top_logprobs=5)
    for record in t.tokens:
        assert math.isfinite(record.logprob) and record.logprob <= 0.0
        values = [lp for _, lp in record.top]
        assert len(values) == 5 and all(math.isfinite(v) for v in values)
        assert values == sorted(values, reverse=True)
        assert record.top[0][0] == record.token_id  # greedy: the argmax is the most likely token
        assert record.top[0][1] == pytest.approx(record.logprob, abs=1e-9)
        assert record.margin >= 0.0
    assert sum(math.exp(lp) for _, lp in t.tokens[0].top) <= 1.0 + 1e-6
    assert all(r.top == [] for r in engine.generate(prompt, SamplingParams(max_tokens=4), top_logprobs=0).tokens)


@pytest.mark.model
def test_stop_strings_cut_at_the_shortest_prefix(default_model, engine, prompt):
    reference = engine.generate(prompt, GREEDY)
    stop = default_model.decode(reference.output_ids[:8])[-3:]
    assert stop.strip()
    t = engine.generate(prompt, SamplingParams(max_tokens=N, stop=(stop,), ignore_eos=True))
    assert t.finish_reason == "stop" and stop not in t.text
    assert t.output_ids == reference.output_ids[: len(t.output_ids)] and len(t.output_ids) <= 8
    assert stop in default_model.decode(t.output_ids)
    assert stop not in default_model.decode(t.output_ids[:-1])


@pytest.mark.model
def test_cancellation_and_streaming(engine, prompt):
    steps: list = []
    t = engine.generate(prompt, GREEDY, on_step=steps.append, should_stop=lambda: len(steps) >= 3)
    assert t.finish_reason == "cancelled" and len(t.output_ids) == 3
    assert t.output_ids == engine.generate(prompt, SamplingParams(max_tokens=3)).output_ids
    stream = engine.stream(prompt, SamplingParams(max_tokens=5))
    events = []
    while True:
        try:
            events.append(next(stream))
        except StopIteration as done:
            final = done.value
            break
    assert [tok.token_id for e in events for tok in e.tokens] == final.output_ids
    assert [e.step for e in events] == final.steps


@pytest.mark.model
def test_transcript_names_engine_version_and_gguf_digest(default_model, engine, prompt):
    import llama_cpp

    t = engine.generate(prompt, SamplingParams(max_tokens=2))
    gguf = target_gguf(default_model)
    assert gguf is not None
    assert t.model_file_digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert t.engine_version == f"llama-cpp-python {llama_cpp.__version__}"
    assert t.model_digest == default_model.digest


@pytest.mark.model
def test_bad_requests_raise_request_error(engine, prompt):
    with pytest.raises(RequestError, match="gumbel"):
        engine.generate(prompt, SamplingParams(max_tokens=2, temperature=1.0, seed=1, mode="speculative-sampling"))
    with pytest.raises(RequestError, match="top_logprobs"):
        engine.generate(prompt, GREEDY, top_logprobs=21)
    with pytest.raises(RequestError):
        engine.generate([], GREEDY)
