"""Issue 20 §4 / issue 23: teacher-forced scoring in chunks of positions gives exactly what scoring
all positions at once gave (verifiers compare these numbers, so they must not move)."""

from __future__ import annotations

import random

import pytest
import torch
from support.tiny import tiny_model

from specguard.engine import scoring
from specguard.engine.sampling import choose, decision_scores
from specguard.transcript import SamplingParams


@torch.inference_mode()
def one_shot(target, prompt_ids, output_ids, params, top_k):
    """The previous implementation: log-softmax, top-k and decision scores over every position at once."""
    n = len(output_ids)
    ids = torch.tensor([list(prompt_ids) + list(output_ids)])
    logits = target.model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits[0, -(n + 1):-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, top_k, dim=-1)
    scores = decision_scores(logits, params, list(range(n)))
    chosen, margins = choose(scores)
    return [(int(t), float(logp[i, t]), list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)),
             chosen[i], margins[i], float(scores[i, chosen[i]] - scores[i, t])) for i, t in enumerate(output_ids)]


PARAMS = {
    "greedy": SamplingParams(max_tokens=200),
    "gumbel": SamplingParams(max_tokens=200, temperature=0.8, top_p=0.9, top_k=40, seed=1234),
}


@pytest.mark.parametrize("mode", sorted(PARAMS))
def test_chunked_scoring_is_bit_identical_to_one_shot(mode, monkeypatch):
    torch.set_num_threads(1)
    model = tiny_model(seed=4, vocab_size=512, layers=2)
    rng = random.Random(9)
    prompt = [rng.randrange(512) for _ in range(12)]
    output = [rng.randrange(512) for _ in range(150)]  # crosses chunk boundaries, last chunk partial
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 64)
    params = PARAMS[mode]
    got = scoring.score(model, prompt, output, params, top_k=7).positions
    want = one_shot(model, prompt, output, params, 7)
    assert len(got) == len(want) == len(output)
    for pos, (tok, lp, top, expected, margin, gap) in zip(got, want, strict=True):
        assert (pos.token_id, pos.logprob, pos.top, pos.expected_id, pos.margin, pos.given_score_gap) == \
            (tok, lp, top, expected, margin, gap), pos.position
    # one chunk per position, and the whole output as one chunk, agree as well
    short = one_shot(model, prompt, output[:20], params, 7)
    for rows in (1, 1000):
        monkeypatch.setattr(scoring, "CHUNK_ROWS", rows)
        again = scoring.score(model, prompt, output[:20], params, top_k=7).positions
        assert [(p.token_id, p.logprob, p.top, p.expected_id, p.margin, p.given_score_gap) for p in again] == short
