"""The engine contract: every engine registered through `register_engines` is held to it.

The list of engines comes from the plugin registry, so an adapter registered by a plugin
(llama.cpp, transformers generate, vLLM, ...) is picked up without editing this file. The checks
use tiny random models and what the engine declares in `capabilities`. Each tiny model is also
written as an F32 GGUF (support.tiny_gguf) and named by that file, as a user's `--model FILE.gguf`
is, so an engine that runs GGUF files (llama.cpp) runs the very same weights:

- the protocol: `make_engine` returns an `Engine` with typed, consistent capabilities;
- greedy output is the engine's own plain decoding, whatever the drafter proposes;
- `rederivable`: teacher-forced scoring re-derives greedy and seeded outputs token for token;
- `uses_drafter`: the drafter is (or is not) asked, and its lifecycle is honoured;
- `logprobs`: records carry the target's log-probabilities and as many alternatives as asked
  (exactly for re-derivable engines; up to another implementation's rounding for the others);
- transcripts name the engine, its version and the model file it ran;
- `stream` and `generate` agree, step callbacks see every step, cancellation works;
- bad inputs raise RequestError.
"""

from __future__ import annotations

import pytest
from support.hostile import MalformedDrafter, RandomIdsDrafter, ScriptedDrafter
from support.tiny_gguf import tiny_gguf_model

from specguard.drafters.base import Drafter, NoDrafter, Proposal
from specguard.drafters.ngram import NgramDrafter
from specguard.engine.factory import engine_names, make_engine
from specguard.engine.interface import Engine, EngineCapabilities, StepEvent, drain
from specguard.engine.scoring import score
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import PluginError, RequestError
from specguard.hookspecs import hookimpl
from specguard.llamacpp_runtime import file_sha256
from specguard.plugin_manager import collect, load_plugins, pm
from specguard.transcript import SAMPLING_MODES, SamplingParams, Transcript


def _distinct_engines() -> list[str]:
    """Every registered engine name, aliases (a name registered with the same factory) once."""
    seen: dict[object, str] = {}
    for name, (factory, _) in collect("register_engines").items():  # registration order: the first name wins
        seen.setdefault(factory, name)
    return sorted(seen.values())


ENGINES = _distinct_engines()
PROMPT = [1, 2, 3, 4, 5, 1, 2, 3]
N = 24

GREEDY = SamplingParams(max_tokens=N)
SEEDED = [
    SamplingParams(max_tokens=N, temperature=1.0, seed=11),
    SamplingParams(max_tokens=N, temperature=0.7, top_p=0.9, seed=12),
    SamplingParams(max_tokens=N, temperature=1.3, top_k=10, seed=2**63 + 5),
]


#: how far a non-re-derivable engine's log-probabilities may be from torch's on the same F32
#: weights (other kernels, llama.cpp's f16 KV cache: measured ~1e-3)
OTHER_KERNELS_LOGPROB_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("contract-gguf")


@pytest.fixture(scope="module")
def lm(gguf_dir):
    return tiny_gguf_model(gguf_dir, seed=1, vocab_size=96, scale=4.0)


@pytest.fixture(params=ENGINES)
def name(request) -> str:
    return request.param


class SpyDrafter(Drafter):
    """Proposes the last context token k times and counts what the engine asks of it."""

    name = "spy"

    def __init__(self) -> None:
        self.started = self.finished = self.proposals = self.observed = 0

    def start(self, prompt_ids, params):
        self.started += 1

    def propose(self, context, k):
        self.proposals += 1
        return Proposal([int(context[-1])] * k)

    def observe(self, drafted, accepted):
        self.observed += 1

    def finish(self):
        self.finished += 1


def build(name: str, lm, drafter: Drafter | None = None) -> Engine:
    return make_engine(lm, drafter or NoDrafter(), name, {})


def plain(name: str, lm, params: SamplingParams, prompt: list[int] = PROMPT) -> Transcript:
    return build(name, lm).generate(prompt, params)


def without_timings(t: Transcript) -> dict:
    out = t.to_json()
    out["metrics"] = {k: v for k, v in out["metrics"].items() if "second" not in k}
    for step in out["steps"]:
        step.pop("draft_seconds")
        step.pop("verify_seconds")
    return out


# -- the protocol ------------------------------------------------------------------------------


def test_registry_has_the_reference_engine_and_its_alias():
    assert {"specguard", "builtin", "llamacpp"} <= set(engine_names())
    engines = collect("register_engines")
    assert engines["builtin"][0] is engines["specguard"][0]
    assert ("builtin" in ENGINES) != ("specguard" in ENGINES)  # the alias is tested once


def test_make_engine_returns_an_engine_with_consistent_capabilities(name, lm):
    engine = build(name, lm)
    assert isinstance(engine, Engine)
    assert isinstance(engine.name, str) and engine.name
    caps = engine.capabilities
    assert isinstance(caps, EngineCapabilities) and caps.problems() == []
    assert set(caps.sampling_modes) <= set(SAMPLING_MODES) and "gumbel" in caps.sampling_modes
    with pytest.raises(AttributeError):  # frozen: an engine cannot change its promises mid-flight
        caps.rederivable = not caps.rederivable  # type: ignore[misc]


def test_transcript_describes_the_request(name, lm):
    engine = build(name, lm)
    t = engine.generate(PROMPT, GREEDY)
    assert t.engine == engine.name
    assert t.engine_version == engine.capabilities.version
    assert t.engine_rederivable == engine.capabilities.rederivable
    assert t.model_file_digest == file_sha256(lm.name)  # the GGUF the tiny model is named by
    assert t.engine_info() == {"name": engine.name, "version": engine.capabilities.version,
                               "model_file_digest": file_sha256(lm.name)}
    assert (t.model_digest, t.tokenizer_digest) == (lm.digest, lm.tokenizer_digest)
    assert t.prompt_ids == PROMPT and t.params == GREEDY
    assert len(t.output_ids) == N and t.finish_reason == "length"
    assert [r.position for r in t.tokens] == list(range(N))
    assert [r.token_id for r in t.tokens] == t.output_ids
    assert t.text == lm.decode(t.output_ids)


# -- output: never the drafter's, re-derivable when declared -------------------------------------


def test_greedy_output_is_its_own_plain_decoding_with_any_drafter(name, lm):
    reference = plain(name, lm, GREEDY).output_ids
    wrong = [(t + 1) % lm.vocab_size for t in reference]
    for drafter in (NgramDrafter(), SpyDrafter(), RandomIdsDrafter(lm.vocab_size), MalformedDrafter(lm.vocab_size),
                    ScriptedDrafter(len(PROMPT), reference), ScriptedDrafter(len(PROMPT), wrong)):
        t = build(name, lm, drafter).generate(PROMPT, GREEDY)
        assert t.output_ids == reference, drafter.name


@pytest.mark.parametrize("params", SEEDED, ids=["t1", "top-p", "top-k"])
def test_seeded_output_does_not_depend_on_the_drafter(name, lm, params):
    reference = plain(name, lm, params).output_ids
    for drafter in (NgramDrafter(), RandomIdsDrafter(lm.vocab_size), ScriptedDrafter(len(PROMPT), reference)):
        assert build(name, lm, drafter).generate(PROMPT, params).output_ids == reference, drafter.name


@pytest.mark.parametrize("params", [GREEDY, *SEEDED], ids=["greedy", "t1", "top-p", "top-k"])
def test_rederivable_engines_are_rederived_by_teacher_forced_scoring(name, lm, params):
    engine = build(name, lm, NgramDrafter())
    t = engine.generate(PROMPT, params)
    if not engine.capabilities.rederivable:  # the capability is honest: the transcript says so too
        assert not t.rederivable
        return
    assert t.rederivable
    rescored = score(lm, PROMPT, t.output_ids, t.params)
    assert [p.expected_id for p in rescored.positions] == t.output_ids
    assert all(p.agrees for p in rescored.positions)


def test_rederivable_engines_draw_and_record_a_missing_seed(name, lm):
    engine = build(name, lm)
    t = engine.generate(PROMPT, SamplingParams(max_tokens=12, temperature=1.0))
    if not engine.capabilities.rederivable:
        assert not t.rederivable
        return
    assert t.params.seed is not None and t.rederivable
    assert build(name, lm).generate(PROMPT, t.params).output_ids == t.output_ids
    rescored = score(lm, PROMPT, t.output_ids, t.params)
    assert [p.expected_id for p in rescored.positions] == t.output_ids


# -- capabilities are honest -----------------------------------------------------------------


def test_uses_drafter_is_honest(name, lm):
    spy = SpyDrafter()
    engine = build(name, lm, spy)
    t = engine.generate(PROMPT, GREEDY)
    if engine.capabilities.uses_drafter:
        assert spy.proposals > 0, "declares uses_drafter=True but never asked the drafter"
        assert (spy.started, spy.finished) == (1, 1)
        assert spy.observed == len(t.steps)
        assert t.drafter == spy.name and all(s.drafter == spy.name for s in t.steps)
        assert any(s.drafted for s in t.steps)
    else:
        assert spy.proposals == 0, "declares uses_drafter=False but asked the drafter"
        assert all(not s.drafted for s in t.steps)


def test_logprobs_are_honest(name, lm):
    engine = build(name, lm, NgramDrafter())
    caps = engine.capabilities
    if not caps.logprobs:
        assert caps.max_top_logprobs == 0
        return
    top_n = caps.max_top_logprobs
    t = engine.generate(PROMPT, SEEDED[0], top_logprobs=top_n)
    rescored = score(lm, PROMPT, t.output_ids, t.params, top_k=top_n)
    tolerance = 1e-4 if caps.rederivable else OTHER_KERNELS_LOGPROB_TOLERANCE
    for record, ref in zip(t.tokens, rescored.positions, strict=True):
        assert record.logprob == pytest.approx(ref.logprob, abs=tolerance)
        assert len(record.top) == min(top_n, lm.vocab_size)
        values = [lp for _, lp in record.top]
        assert values == sorted(values, reverse=True)
        if caps.rederivable:
            assert [tok for tok, _ in record.top[:3]] == [tok for tok, _ in ref.top[:3]]
        else:  # the same alternatives up to rounding: each one's logprob is torch's
            reference = dict(ref.top)
            assert all(lp == pytest.approx(reference[tok], abs=tolerance) for tok, lp in record.top[:3]
                       if tok in reference)
            assert record.top[0][0] in reference
        assert record.logprob <= record.top[0][1] + 1e-6
    none = engine.generate(PROMPT, GREEDY, top_logprobs=0)
    assert all(r.top == [] for r in none.tokens)


def test_unsupported_sampling_modes_are_refused(name, lm):
    engine = build(name, lm)
    for mode in SAMPLING_MODES:
        if mode not in engine.capabilities.sampling_modes:
            with pytest.raises(RequestError):
                engine.generate(PROMPT, SamplingParams(max_tokens=4, temperature=1.0, seed=1, mode=mode))


def test_speculative_sampling_never_trusts_an_untrusted_drafter(name, lm):
    caps = build(name, lm).capabilities
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=1, mode="speculative-sampling")
    if "speculative-sampling" not in caps.sampling_modes or not caps.uses_drafter:
        # no such mode with a drafter: then an untrusted drafter's request is refused outright
        with pytest.raises(RequestError):
            build(name, lm, RandomIdsDrafter(lm.vocab_size)).generate(PROMPT, params)
        return
    with pytest.raises(RequestError, match="trusted"):
        build(name, lm, RandomIdsDrafter(lm.vocab_size)).generate(PROMPT, params)
    t = build(name, lm).generate(PROMPT, params)  # NoDrafter is trusted
    assert len(t.output_ids) == 8 and not t.rederivable


# -- stream and generate ---------------------------------------------------------------------


@pytest.mark.parametrize("params", [GREEDY, SEEDED[1]], ids=["greedy", "seeded"])
def test_stream_and_generate_agree(name, lm, params):
    seen_steps = []
    stream = build(name, lm, NgramDrafter()).stream(PROMPT, params, on_step=seen_steps.append, top_logprobs=3)
    events: list[StepEvent] = []
    while True:
        try:
            events.append(next(stream))
        except StopIteration as done:
            streamed = done.value
            break
    assert isinstance(streamed, Transcript)
    assert all(isinstance(e, StepEvent) for e in events)
    assert [tok.token_id for e in events for tok in e.tokens] == streamed.output_ids
    assert [tok for e in events for tok in e.tokens] == streamed.tokens
    assert [e.step for e in events] == streamed.steps == seen_steps
    generated = build(name, lm, NgramDrafter()).generate(PROMPT, params, top_logprobs=3)
    assert without_timings(generated) == without_timings(streamed)
    assert without_timings(drain(build(name, lm, NgramDrafter()).stream(PROMPT, params, top_logprobs=3))) == \
        without_timings(streamed)


def test_stop_string_ends_the_stream_at_the_shortest_prefix(name, lm):
    reference = plain(name, lm, GREEDY).output_ids
    stop = lm.decode([reference[5]])
    first = reference.index(reference[5])
    stream = build(name, lm, NgramDrafter()).stream(PROMPT, SamplingParams(max_tokens=N, stop=(stop,)))
    tokens = []
    while True:
        try:
            tokens.extend(t.token_id for t in next(stream).tokens)
        except StopIteration as done:
            t = done.value
            break
    assert t.finish_reason == "stop" and t.output_ids == reference[: first + 1] == tokens
    assert stop not in t.text


def test_eos_and_budget(name, lm, gguf_dir):
    reference = plain(name, lm, GREEDY).output_ids
    eos = reference[6]
    lm_eos = tiny_gguf_model(gguf_dir, seed=1, vocab_size=96, scale=4.0, eos_token_id=eos)
    t = build(name, lm_eos, NgramDrafter()).generate(PROMPT, GREEDY)
    assert t.finish_reason == "stop" and t.output_ids == reference[: reference.index(eos) + 1]
    through = build(name, lm_eos, NgramDrafter()).generate(PROMPT, SamplingParams(max_tokens=N, ignore_eos=True))
    assert through.finish_reason == "length" and through.output_ids == reference
    short = build(name, lm, NgramDrafter()).generate(PROMPT, SamplingParams(max_tokens=3))
    assert short.output_ids == reference[:3] and short.finish_reason == "length"


def test_should_stop_cancels_before_the_next_step(name, lm):
    t = build(name, lm).generate(PROMPT, GREEDY, should_stop=lambda: True)
    assert t.finish_reason == "cancelled" and t.output_ids == [] and t.tokens == []
    steps: list = []
    t = build(name, lm).generate(PROMPT, GREEDY, on_step=steps.append, should_stop=lambda: len(steps) >= 2)
    assert t.finish_reason == "cancelled" and len(t.steps) == 2
    assert t.output_ids == plain(name, lm, GREEDY).output_ids[: len(t.output_ids)]


# -- bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_raise_request_error(name, lm):
    engine = build(name, lm)
    too_long = [0] * lm.max_context
    for prompt in ([], [lm.vocab_size], [-1], too_long):
        with pytest.raises(RequestError):
            engine.generate(prompt, GREEDY)
    maximum = engine.capabilities.max_top_logprobs
    for top_n in (-1, maximum + 1):
        with pytest.raises(RequestError, match="top_logprobs"):
            engine.generate(PROMPT, GREEDY, top_logprobs=top_n)


# -- make_engine refuses factories that do not return an Engine -------------------------------


class _NotAnEngine:
    name = "half"

    def generate(self, prompt_ids, params, **kw):
        raise AssertionError("never called")


class _BadCaps(SpeculativeEngine):
    capabilities = {"rederivable": True}  # type: ignore[assignment]


class _InconsistentCaps(SpeculativeEngine):
    capabilities = EngineCapabilities(rederivable=True, uses_drafter=True, logprobs=False, max_top_logprobs=5)


class _BadEngines:
    @hookimpl
    def register_engines(self, register):
        register("bad-object", lambda target, drafter, options: object(), "")
        register("bad-half", lambda target, drafter, options: _NotAnEngine(), "")
        register("bad-caps-type", lambda target, drafter, options: _BadCaps(target, drafter), "")
        register("bad-caps", lambda target, drafter, options: _InconsistentCaps(target, drafter), "")


@pytest.fixture
def bad_engines():
    load_plugins()
    pm.register(_BadEngines(), name="bad-engines-test-plugin")
    yield
    pm.unregister(name="bad-engines-test-plugin")


@pytest.mark.parametrize("bad, message", [
    ("bad-object", "not an Engine"),
    ("bad-half", "missing capabilities, stream"),
    ("bad-caps-type", "wrong type"),
    ("bad-caps", "max_top_logprobs > 0 without logprobs"),
])
def test_make_engine_refuses_what_is_not_an_engine(bad_engines, lm, bad, message):
    with pytest.raises(PluginError, match=message) as info:
        make_engine(lm, NoDrafter(), bad)
    assert bad in str(info.value.field)
