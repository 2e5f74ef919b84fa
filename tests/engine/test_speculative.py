"""The speculative engine: lossless for every drafter, seed-deterministic, robust to hostile drafts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.hostile import LeastLikelyDrafter, MalformedDrafter, RandomIdsDrafter, ScriptedDrafter
from support.tiny import tiny_model

from specguard.drafters.base import NoDrafter
from specguard.drafters.model_drafter import ModelDrafter, early_exit_model
from specguard.drafters.ngram import NgramDrafter
from specguard.engine.scoring import score
from specguard.engine.speculative import DraftLength, SpeculativeEngine, pad_rows
from specguard.errors import RequestError
from specguard.transcript import SamplingParams

PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [7, 7, 7], [10, 20, 30, 40, 50, 60], [3], [5, 9, 5, 9, 5, 9, 5]]


def hf_greedy(lm, ids: list[int], n: int) -> list[int]:
    out = lm.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        use_cache=True,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=1, vocab_size=96, scale=4.0)


def drafters_for(lm, prompt, reference):
    draft = tiny_model(seed=2, vocab_size=lm.vocab_size, scale=4.0)
    return [
        NoDrafter(),
        NgramDrafter(),
        ModelDrafter(draft.model),
        ModelDrafter(early_exit_model(lm.model, 1), name="early-exit"),
        ScriptedDrafter(len(prompt), reference),
        LeastLikelyDrafter(lm),
        RandomIdsDrafter(lm.vocab_size),
        MalformedDrafter(lm.vocab_size),
    ]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers_for_every_drafter_tiny(tiny, prompt):
    reference = hf_greedy(tiny, prompt, 40)
    for drafter in drafters_for(tiny, prompt, reference):
        t = SpeculativeEngine(tiny, drafter).generate(prompt, SamplingParams(max_tokens=40))
        assert t.output_ids == reference, drafter.name
        assert t.finish_reason == "length"
        assert len(t.tokens) == 40 and [r.position for r in t.tokens] == list(range(40))


def test_pad_rows():
    assert pad_rows([], 4) == []  # plain decoding is never padded
    assert pad_rows([7], 4) == [7, 7] and pad_rows([7, 8], 4) == [8]
    assert pad_rows([1, 2, 3], 4) == [] and pad_rows([1, 2, 3, 4, 5], 4) == []
    assert pad_rows([7], 1) == []


def test_padded_verification_rows_change_nothing(tiny):
    prompt = PROMPTS[0]
    reference = hf_greedy(tiny, prompt, 40)
    runs = {}
    for rows in (1, 4, 9):
        engine = SpeculativeEngine(tiny, ScriptedDrafter(len(prompt), reference[:20] + [0] * 20), min_verify_rows=rows)
        runs[rows] = engine.generate(prompt, SamplingParams(max_tokens=40))
        assert runs[rows].output_ids == reference
    lp = {rows: [r.logprob for r in t.tokens] for rows, t in runs.items()}
    assert np.allclose(lp[1], lp[4], atol=1e-4) and np.allclose(lp[1], lp[9], atol=1e-4)
    # with padding, the engine never asks for fewer drafts than the free rows allow
    assert all(len(s.drafted) >= 3 for s in runs[4].steps[:-3] if s.drafted)
    with pytest.raises(ValueError):
        SpeculativeEngine(tiny, min_verify_rows=0)


def test_perfect_drafter_accepts_many_tokens_per_step(tiny):
    prompt = PROMPTS[0]
    reference = hf_greedy(tiny, prompt, 40)
    t = SpeculativeEngine(tiny, ScriptedDrafter(len(prompt), reference)).generate(prompt, SamplingParams(max_tokens=40))
    m = t.metrics()
    assert m["mean_accepted_tokens"] > 3
    assert m["acceptance_rate"] == 1.0
    assert sum(len(s.emitted) for s in t.steps) == 40


def test_malformed_proposals_are_rejected_whole_and_counted(tiny):
    t = SpeculativeEngine(tiny, MalformedDrafter(tiny.vocab_size)).generate([1, 2, 3], SamplingParams(max_tokens=30))
    reasons = [s.rejected_proposal for s in t.steps if s.rejected_proposal]
    assert len(reasons) >= 8
    assert any("outside the vocabulary" in r for r in reasons)
    assert any("drafter raised RuntimeError" in r for r in reasons)
    assert any("at most" in r for r in reasons)
    assert t.metrics()["rejected_proposals"] == len(reasons)
    assert all(s.drafted == [] for s in t.steps if s.rejected_proposal)


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=32, temperature=1.0, seed=11),
    SamplingParams(max_tokens=32, temperature=0.7, top_p=0.9, seed=12),
    SamplingParams(max_tokens=32, temperature=1.3, top_k=10, seed=2**63 + 5),
])
def test_sampled_output_same_with_every_drafter_and_rederivable(tiny, params):
    prompt = PROMPTS[2]
    plain = SpeculativeEngine(tiny, NoDrafter()).generate(prompt, params)
    for drafter in drafters_for(tiny, prompt, plain.output_ids):
        t = SpeculativeEngine(tiny, drafter).generate(prompt, params)
        assert t.output_ids == plain.output_ids, drafter.name
    # anyone with the model and the seed re-derives every token in one teacher-forced pass
    rescored = score(tiny, prompt, plain.output_ids, params)
    assert [p.expected_id for p in rescored.positions] == plain.output_ids
    assert plain.rederivable


def test_trusted_model_drafter_with_seed_is_accepted_more(tiny):
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=99)
    same = ModelDrafter(tiny.model)  # a drafter identical to the target, trusted with the seed
    t = SpeculativeEngine(tiny, same).generate(PROMPTS[0], params)
    assert t.metrics()["acceptance_rate"] > 0.95


def test_missing_seed_is_drawn_by_verifier_and_recorded(tiny):
    t = SpeculativeEngine(tiny).generate([1, 2], SamplingParams(max_tokens=8, temperature=1.0))
    assert t.params.seed is not None
    again = SpeculativeEngine(tiny).generate([1, 2], t.params)
    assert again.output_ids == t.output_ids


def test_speculative_sampling_mode_needs_trusted_drafter(tiny):
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=1, mode="speculative-sampling")
    with pytest.raises(RequestError, match="trusted"):
        SpeculativeEngine(tiny, RandomIdsDrafter(tiny.vocab_size)).generate([1, 2], params)
    t = SpeculativeEngine(tiny, ModelDrafter(tiny_model(seed=2, vocab_size=96).model)).generate([1, 2], params)
    assert len(t.output_ids) == 8 and not t.rederivable


def test_eos_and_stop_strings(tiny):
    lm = tiny_model(seed=1, vocab_size=96, scale=4.0)
    plain = SpeculativeEngine(lm).generate([1, 2, 3], SamplingParams(max_tokens=30))
    eos = plain.output_ids[5]
    lm_eos = tiny_model(seed=1, vocab_size=96, scale=4.0, eos_token_id=eos)
    t = SpeculativeEngine(lm_eos, NgramDrafter()).generate([1, 2, 3], SamplingParams(max_tokens=30))
    first = plain.output_ids.index(eos)
    assert t.output_ids == plain.output_ids[: first + 1] and t.finish_reason == "stop"
    through = SpeculativeEngine(lm_eos, NgramDrafter()).generate([1, 2, 3], SamplingParams(max_tokens=30, ignore_eos=True))
    assert through.output_ids == plain.output_ids and through.finish_reason == "length"
    assert through.params.to_json()["ignore_eos"] is True
    assert SamplingParams.from_json(through.params.to_json()) == through.params
    stop = f"<{plain.output_ids[3]}>"
    t2 = SpeculativeEngine(lm, NgramDrafter()).generate([1, 2, 3], SamplingParams(max_tokens=30, stop=(stop,)))
    assert t2.finish_reason == "stop" and stop not in t2.text
    assert t2.output_ids == plain.output_ids[: plain.output_ids.index(plain.output_ids[3]) + 1]


def test_bad_requests_raise_request_error(tiny):
    engine = SpeculativeEngine(tiny)
    for prompt in ([], [tiny.vocab_size], [-1], [0] * 600):
        with pytest.raises(RequestError):
            engine.generate(prompt, SamplingParams(max_tokens=4))
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"seed": -3}, {"mode": "x"},
                {"ignore_eos": "yes"}):
        with pytest.raises(RequestError):
            SamplingParams(**{"max_tokens": 4, **bad})


def test_cancel_stops_generation(tiny):
    calls = []
    t = SpeculativeEngine(tiny).generate([1], SamplingParams(max_tokens=50), should_stop=lambda: len(calls) > 3,
                                         on_step=calls.append)
    assert t.finish_reason == "cancelled" and len(t.output_ids) == 4


def test_draft_length_adapts():
    d = DraftLength(k=4, maximum=6)
    d.update(4, 4)
    assert d.k == 5
    d.update(5, 1)
    assert d.k == 2
    d.update(0, 0)
    assert d.k == 2


def test_stream_yields_tokens_in_order(tiny):
    stream = SpeculativeEngine(tiny, NgramDrafter()).stream([1, 2, 3, 1, 2], SamplingParams(max_tokens=20))
    seen = []
    while True:
        try:
            seen.extend(t.token_id for t in next(stream).tokens)
        except StopIteration as done:
            assert seen == done.value.output_ids
            break
