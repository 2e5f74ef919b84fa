"""The acceptance rule on its own: verify_step on hand-made logits, no model involved."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specguard.engine.acceptance import StepOutcome, verify_step
from specguard.engine.sampling import NEAR_TIE_EPSILON, filtered_logprobs, gumbel_noise
from specguard.transcript import SamplingParams

V = 16
GREEDY = SamplingParams(max_tokens=8)


def peaked(ids: list[int], vocab: int = V, seed: int = 0) -> torch.Tensor:
    """Random logits whose row i has its clear maximum at ids[i]."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(ids), vocab, generator=g)
    for row, tok in enumerate(ids):
        logits[row, tok] = logits[row].max() + 2.0
    return logits


def test_accept_all_emits_the_draft_and_a_bonus_token():
    logits = peaked([3, 7, 1, 9])
    before = logits.clone()
    out = verify_step(logits, [3, 7, 1], GREEDY)
    assert out == StepOutcome(accepted=3, emitted=[3, 7, 1, 9], margins=out.margins)
    assert len(out.margins) == 4 and all(m > 1.99 for m in out.margins)
    assert torch.equal(logits, before)  # pure: the logits are not touched


def test_reject_first_emits_the_targets_token_only():
    out = verify_step(peaked([5, 7, 1, 9]), [3, 7, 1], GREEDY)
    assert out.accepted == 0 and out.emitted == [5] and len(out.margins) == 1


def test_reject_in_the_middle_keeps_the_agreeing_prefix():
    out = verify_step(peaked([3, 7, 2, 9]), [3, 7, 1], GREEDY)
    assert out.accepted == 2 and out.emitted == [3, 7, 2]
    # the rows after a rejection do not matter: the target's token at the rejection ends the step
    assert verify_step(peaked([3, 7, 2, 4]), [3, 7, 1], GREEDY).emitted == [3, 7, 2]


def test_empty_draft_is_plain_decoding():
    out = verify_step(peaked([11]), [], GREEDY)
    assert out.accepted == 0 and out.emitted == [11]


def test_wrong_number_of_rows_is_refused():
    with pytest.raises(ValueError, match="logits rows"):
        verify_step(peaked([1, 2]), [1, 2], GREEDY)
    with pytest.raises(ValueError, match="logits rows"):
        verify_step(torch.zeros(V), [], GREEDY)


def reference_gumbel(logits: torch.Tensor, params: SamplingParams, start: int) -> list[int]:
    """The documented rule, written out with numpy: argmax_v log p_t(v) + G(seed, t, v)."""
    logp = filtered_logprobs(logits, params).numpy()
    return [int(np.argmax(logp[i] + gumbel_noise(params.seed, start + i, logits.shape[-1]))) for i in range(len(logp))]


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=8, temperature=1.0, seed=7),
    SamplingParams(max_tokens=8, temperature=0.6, top_k=5, seed=2**63 + 1),
    SamplingParams(max_tokens=8, temperature=1.4, top_p=0.8, seed=123),
])
def test_sampled_step_follows_the_gumbel_rule_at_its_positions(params):
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(3))
    start = 11
    expected = reference_gumbel(logits, params, start)
    out = verify_step(logits, expected[:4], params, start=start)
    assert out.accepted == 4 and out.emitted == expected
    # the noise is keyed by output position: the same logits at other positions decide otherwise
    shifted = reference_gumbel(logits, params, start + 1)
    assert shifted != expected
    assert verify_step(logits[:1], [], params, start=start).emitted == expected[:1]
    # a draft that disagrees with the rule at position 2 is cut there
    draft = expected[:2] + [(expected[2] + 1) % V, expected[3]]
    cut = verify_step(logits, draft, params, start=start)
    assert cut.accepted == 2 and cut.emitted == expected[:3]


def test_sampled_step_never_emits_a_filtered_token():
    params = SamplingParams(max_tokens=8, temperature=1.0, top_k=1, seed=5)
    logits = peaked([4, 4, 4])
    for start in range(20):
        assert verify_step(logits, [4, 4], params, start=start).emitted == [4, 4, 4]


def test_sampled_step_without_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        verify_step(peaked([1]), [], SamplingParams(max_tokens=8, temperature=1.0))


def test_exact_tie_goes_to_the_lowest_id():
    logits = torch.zeros(2, V)
    logits[:, 6] = 3.0
    logits[:, 2] = 3.0  # ties with 6
    out = verify_step(logits, [6], GREEDY)
    assert out.accepted == 0 and out.emitted == [2] and out.margins == [0.0]
    assert verify_step(logits, [2], GREEDY) == StepOutcome(accepted=1, emitted=[2, 2], margins=[0.0, 0.0])


def test_near_tie_is_decided_by_the_scores_and_reported_by_its_margin():
    logits = torch.zeros(1, V, dtype=torch.float64)
    logits[0, 2] = 3.0
    logits[0, 6] = 3.0 + 1e-6  # higher id, slightly higher score: it wins, and the margin says it was close
    out = verify_step(logits, [], GREEDY)
    assert out.emitted == [6]
    assert 0 < out.margins[0] < NEAR_TIE_EPSILON


def test_speculative_sampling_mode():
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=1, mode="speculative-sampling")
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(9))
    p = filtered_logprobs(logits, params).exp()
    rng = np.random.Generator(np.random.Philox(key=1))
    # q == p: every draft token is accepted (min(1, p/q) = 1), then one bonus token
    out = verify_step(logits, [1, 2], params, draft_probs=p[:2].clone(), rng=rng)
    assert out.accepted == 2 and out.emitted[:2] == [1, 2] and len(out.emitted) == 3
    assert all(math.isinf(m) for m in out.margins)
    # q puts all its mass on a token the target gives (almost) nothing: rejected, resampled elsewhere
    logits2 = logits.clone()
    logits2[0, 5] = -1e9
    q = torch.zeros(1, V, dtype=torch.float64)
    q[0, 5] = 1.0
    out = verify_step(logits2[:2], [5], params, draft_probs=q, rng=rng)
    assert out.accepted == 0 and len(out.emitted) == 1 and out.emitted[0] != 5
    with pytest.raises(ValueError, match="rng"):
        verify_step(logits[:1], [], params)
    with pytest.raises(ValueError, match="draft_probs"):
        verify_step(logits[:2], [5], params, rng=rng)
