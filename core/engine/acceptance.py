"""The acceptance rule: which draft tokens one target forward pass accepts, and what it emits.

`verify_step` is a pure function of the target's logits for one step, the draft and the
sampling parameters (as gpt-fast's `speculative_decode` and vLLM's v1 `RejectionSampler`):

- `gumbel` mode (greedy or seeded sampling, the default): at each draft position the target's
  own choice is the argmax of its decision scores (`sampling.decision_scores`: the logits for
  greedy, log p + Gumbel noise keyed by (seed, output position) for sampling). Draft tokens are
  accepted while they equal that choice; at the first disagreement the target's choice is emitted
  instead; after full acceptance the target's choice at the extra row is the bonus token. Every
  emitted token is the target's choice, so the output never depends on the drafter. On exactly
  equal scores the lowest token id wins.
- `speculative-sampling` mode (Leviathan et al. 2023, Algorithm 1): accept draft token x with
  probability min(1, p(x)/q(x)) using the verifier's random numbers, else sample from
  norm(max(0, p - q)); after full acceptance sample the bonus token from p. Only for trusted
  drafters (it reads their q) and not re-derivable.

Stop tokens, budgets and records are the caller's business (see `stops` and `records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..transcript import SamplingParams
from .sampling import choose, decision_scores, filtered_logprobs


@dataclass(frozen=True)
class StepOutcome:
    """What one verification step decided.

    `emitted` is the accepted draft prefix followed by one target token (the correction at the
    first rejection, or the bonus token after full acceptance), so len(emitted) == accepted + 1.
    `margins[i]` is the best-minus-second decision score behind `emitted[i]` (inf where the
    rule has no margin, as in speculative-sampling mode).
    """

    accepted: int
    emitted: list[int]
    margins: list[float]


def uses_speculative_sampling(params: SamplingParams) -> bool:
    """True when `params` ask for Leviathan-style speculative sampling (sampled, that mode)."""
    return params.mode == "speculative-sampling" and not params.greedy


def verify_step(
    logits: torch.Tensor,
    draft: list[int],
    params: SamplingParams,
    *,
    start: int = 0,
    draft_probs: Any = None,
    rng: np.random.Generator | None = None,
) -> StepOutcome:
    """Decide one step from the target's logits.

    `logits` has len(draft)+1 rows: row i is the target's next-token logits at output position
    `start + i` (after the context and draft[:i]). `draft_probs` (q, one row per draft token)
    and `rng` (the verifier's random numbers, advanced in place) are read only in
    speculative-sampling mode. `logits` is not modified.
    """
    if logits.dim() != 2 or logits.shape[0] != len(draft) + 1:
        raise ValueError(f"verify_step needs len(draft)+1 = {len(draft) + 1} logits rows, got shape {tuple(logits.shape)}")
    if uses_speculative_sampling(params):
        if rng is None:
            raise ValueError("speculative-sampling mode needs the verifier's random generator (rng)")
        if draft and draft_probs is None:
            raise ValueError("speculative-sampling mode needs the drafter's probabilities (draft_probs)")
        emitted, accepted = speculative_sampling(logits, draft, draft_probs, params, rng)
        return StepOutcome(accepted=accepted, emitted=emitted, margins=[float("inf")] * len(emitted))
    positions = list(range(start, start + len(draft) + 1))
    chosen, margins = choose(decision_scores(logits, params, positions))
    accepted = 0
    while accepted < len(draft) and draft[accepted] == chosen[accepted]:
        accepted += 1
    return StepOutcome(
        accepted=accepted, emitted=draft[:accepted] + [chosen[accepted]], margins=margins[: accepted + 1]
    )


def speculative_sampling(
    logits: torch.Tensor, draft: list[int], q: Any, params: SamplingParams, rng: np.random.Generator
) -> tuple[list[int], int]:
    """Leviathan et al. Algorithm 1 with the verifier's own random numbers: (emitted, accepted)."""
    p = filtered_logprobs(logits, params).exp()
    for i, tok in enumerate(draft):
        qi = q[i].to(torch.float64)
        ratio = float(p[i, tok]) / max(float(qi[tok]), 1e-300)
        if rng.random() < min(1.0, ratio):
            continue
        residual = torch.clamp(p[i] - qi, min=0)
        total = float(residual.sum())
        dist = residual / total if total > 0 else p[i]
        return draft[:i] + [sample(dist, rng)], i
    return draft + [sample(p[len(draft)], rng)], len(draft)


def sample(dist: torch.Tensor, rng: np.random.Generator) -> int:
    """One draw from the (possibly unnormalised) distribution `dist` by inverse CDF."""
    cdf = torch.cumsum(dist, dim=0)
    u = rng.random() * float(cdf[-1])
    return int(min(int(torch.searchsorted(cdf, torch.tensor(u, dtype=cdf.dtype))), dist.shape[0] - 1))
