"""The transformers engine (specguard.engine.transformers_engine) on tiny random models.

What is checked beyond the contract suite (tests/engine/test_contract.py, which also runs on it):
greedy equals plain `model.generate`; prompt lookup and assisted generation give the same output
as plain decoding while really taking multi-token steps; seeded outputs equal the built-in
engine's and are re-derived by teacher-forced scoring on every path (so the position index the
logits processor uses is right on every candidate row); logprobs equal `output_logits`;
cancellation and stop strings end generation at a step boundary and the worker thread ends.
"""

from __future__ import annotations

import threading

import pytest
import torch
from support.tiny import tiny_model
from transformers import GenerationConfig

from specguard.drafters.base import NoDrafter
from specguard.drafters.model_drafter import ModelDrafter
from specguard.drafters.ngram import NgramDrafter
from specguard.engine.factory import make_engine
from specguard.engine.interface import StepEvent
from specguard.engine.scoring import score
from specguard.engine.speculative import SpeculativeEngine
from specguard.engine.transformers_engine import GumbelMaxChooser, TransformersEngine
from specguard.errors import UsageError
from specguard.transcript import SamplingParams

PROMPT = [1, 2, 3, 4, 5, 1, 2, 3]
N = 24
SEEDED = [
    SamplingParams(max_tokens=N, temperature=1.0, seed=11),
    SamplingParams(max_tokens=N, temperature=0.7, top_p=0.9, seed=12),
    SamplingParams(max_tokens=N, temperature=1.3, top_k=10, seed=2**63 + 5),
]


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=1, vocab_size=96, scale=4.0)


@pytest.fixture(scope="module")
def draft(lm):
    """A different random model with the same vocabulary, as the assistant."""
    return tiny_model(seed=2, vocab_size=96, scale=4.0, layers=1)


def plain_generate(lm, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids),
                            generation_config=GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=[]))
    return out[0, len(prompt):].tolist()


def repetitive_prompt(lm) -> list[int]:
    """A prompt that holds the model's own continuation, so prompt lookup's copies get accepted."""
    head = plain_generate(lm, PROMPT, 16)
    return PROMPT + head + PROMPT


def engines(lm, draft):
    return {
        "plain": TransformersEngine(lm, NoDrafter()),
        "prompt-lookup": TransformersEngine(lm, NgramDrafter()),
        "assisted": TransformersEngine(lm, ModelDrafter(draft.model)),
    }


def test_registered_by_name(lm):
    assert isinstance(make_engine(lm, NoDrafter(), "transformers"), TransformersEngine)


def test_strategy_follows_the_drafter(lm, draft):
    assert {k: e.strategy()[0] for k, e in engines(lm, draft).items()} == {
        "plain": "none", "prompt-lookup": "ngram", "assisted": "draft-model"}


@pytest.mark.parametrize("prompt", [PROMPT, [7, 8, 9], list(range(40, 60))])
def test_greedy_equals_plain_generate(lm, prompt):
    t = TransformersEngine(lm).generate(prompt, SamplingParams(max_tokens=N))
    assert t.output_ids == plain_generate(lm, prompt, N)
    assert all(len(s.emitted) == 1 for s in t.steps)  # plain decoding: one token per forward


def test_prompt_lookup_and_assisted_equal_greedy_with_multi_token_steps(lm, draft):
    prompt = repetitive_prompt(lm)
    reference = plain_generate(lm, prompt, N)
    for name, engine in engines(lm, draft).items():
        t = engine.generate(prompt, SamplingParams(max_tokens=N))
        assert t.output_ids == reference, name
        if name == "prompt-lookup":
            assert any(len(s.emitted) > 1 for s in t.steps), "prompt lookup never accepted a candidate"
            assert any(s.drafted for s in t.steps)
            assert len(t.steps) < N


def test_assisted_with_the_target_as_its_own_assistant_accepts_everything(lm):
    """A draft model equal to the target proposes the target's choices: steps carry several tokens."""
    t = TransformersEngine(lm, ModelDrafter(lm.model)).generate(PROMPT, SEEDED[0])
    assert t.output_ids == TransformersEngine(lm).generate(PROMPT, SEEDED[0]).output_ids
    assert any(len(s.emitted) > 1 for s in t.steps)


@pytest.mark.parametrize("params", SEEDED, ids=["t1", "top-p", "top-k"])
def test_seeded_output_is_the_reference_engines_on_every_path(lm, draft, params):
    """Equal to the built-in engine with the same seed: the noise is indexed by the right position
    on every candidate row of prompt lookup and assisted decoding, and scoring re-derives it."""
    for prompt in (PROMPT, repetitive_prompt(lm)):
        reference = SpeculativeEngine(lm).generate(prompt, params).output_ids
        for name, engine in engines(lm, draft).items():
            t = engine.generate(prompt, params)
            assert t.output_ids == reference, name
            rescored = score(lm, prompt, t.output_ids, t.params)
            assert [p.expected_id for p in rescored.positions] == t.output_ids, name


def test_seeds_change_the_output(lm):
    a = TransformersEngine(lm).generate(PROMPT, SEEDED[0]).output_ids
    b = TransformersEngine(lm).generate(PROMPT, SamplingParams(max_tokens=N, temperature=1.0, seed=12)).output_ids
    assert a != b


def test_processor_indexes_noise_by_prefix_length(lm):
    """The row for output position t is processed with prompt + t tokens of input_ids."""
    params = SEEDED[0]
    chooser = GumbelMaxChooser(params, prompt_len=len(PROMPT))
    logits = torch.randn(1, lm.vocab_size)
    picks = {}
    for t in range(3):
        out = chooser(torch.tensor([PROMPT + [0] * t]), logits.clone())
        assert int((out[0] == 0.0).sum()) == 1 and float(out[0].min()) > float("-inf")
        picks[t] = int(out[0].argmax())
    from specguard.engine.sampling import choose, decision_scores

    assert picks == {t: choose(decision_scores(logits, params, [t]))[0][0] for t in range(3)}


def test_logprobs_equal_output_logits(lm):
    ids = torch.tensor([PROMPT])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), return_dict_in_generate=True, output_logits=True,
                            generation_config=GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=[]))
    t = TransformersEngine(lm).generate(PROMPT, SamplingParams(max_tokens=8), top_logprobs=3)
    for record, row in zip(t.tokens, out.logits, strict=True):
        logp = torch.log_softmax(row[0].float(), dim=-1)
        assert record.logprob == pytest.approx(float(logp[record.token_id]), abs=1e-6)
        assert [tok for tok, _ in record.top] == torch.topk(logp, 3).indices.tolist()


def _workers() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name == "specguard-transformers-generate"]


def test_cancellation_stops_generate_at_a_step_boundary(lm):
    steps: list = []
    t = TransformersEngine(lm).generate(PROMPT, SamplingParams(max_tokens=N), on_step=steps.append,
                                        should_stop=lambda: len(steps) >= 3)
    assert t.finish_reason == "cancelled" and len(t.steps) == 3 and len(t.output_ids) == 3
    assert t.output_ids == plain_generate(lm, PROMPT, 3)
    assert _workers() == []


def test_closing_the_stream_early_ends_the_worker(lm):
    stream = TransformersEngine(lm, NgramDrafter()).stream(PROMPT, SamplingParams(max_tokens=N))
    assert isinstance(next(stream), StepEvent)
    stream.close()
    assert _workers() == []


def test_stop_string(lm):
    reference = plain_generate(lm, PROMPT, N)
    stop = lm.decode([reference[4]])
    first = reference.index(reference[4])
    for drafter in (NoDrafter(), NgramDrafter()):
        t = TransformersEngine(lm, drafter).generate(PROMPT, SamplingParams(max_tokens=N, stop=(stop,)))
        assert t.finish_reason == "stop" and t.output_ids == reference[: first + 1]
        assert stop not in t.text and t.text == lm.decode(reference[:first])


def test_generate_errors_reach_the_caller(lm, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    engine = TransformersEngine(lm)
    monkeypatch.setattr(lm.model, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        engine.generate(PROMPT, SamplingParams(max_tokens=4))
    assert _workers() == []


def test_a_model_whose_generation_config_changes_logits_is_refused():
    lm = tiny_model(seed=3, vocab_size=64)
    lm.model.generation_config.repetition_penalty = 1.1
    with pytest.raises(UsageError, match="repetition_penalty"):
        TransformersEngine(lm)
