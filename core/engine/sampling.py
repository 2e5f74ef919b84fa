"""Seed-deterministic, verifiable sampling (Gumbel-max with a counter-based noise stream).

The token at output position t is

    argmax_v  ( log p_t(v) + G(seed, t, v) )

where p_t is the target's distribution after temperature, top-k and top-p, and G is standard
Gumbel noise from a keyed counter-based generator, so the output is a deterministic function of
(model, prompt, parameters, seed) that anyone holding the model can re-derive, whatever drafter
proposed the tokens. Greedy decoding (temperature 0) is the argmax of the logits.

Noise generator (portable, documented in docs/engine.md):
    key     = first 16 bytes of SHA-256("specguard/gumbel/v1" || seed as 8-byte big-endian),
              read as a little-endian 128-bit integer
    stream  = Philox4x64-10 (Salmon et al. 2011; numpy.random.Philox) with that key and the
              256-bit counter whose highest 64-bit word is t (the output position)
    u_v     = ((w_v >> 11) + 0.5) * 2**-53 for the v-th raw 64-bit output word w_v, in (0, 1)
    G_v     = -log(-log(u_v))     (IEEE-754 double)

Tie rule: when two tokens have exactly equal scores, the lower token id wins (torch.argmax
returns the first maximum).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from ..transcript import SamplingParams

GUMBEL_TAG = b"specguard/gumbel/v1"

#: Decisions whose best-minus-second score margin is below this are "near-ties": verifying k
#: tokens in one pass uses other matrix shapes than decoding one, which moves fp32 logits in the
#: last bits, so such a decision may legitimately flip between two honest computations.
NEAR_TIE_EPSILON = 1e-3


def philox_key(seed: int) -> int:
    digest = hashlib.sha256(GUMBEL_TAG + int(seed).to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:16], "little")


def gumbel_noise(seed: int, position: int, vocab_size: int) -> np.ndarray:
    """Standard Gumbel noise for (seed, position), one value per vocabulary entry."""
    gen = np.random.Philox(key=philox_key(seed), counter=int(position) << 192)
    raw = gen.random_raw(vocab_size)
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0**-53)
    return -np.log(-np.log(u))


def filtered_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log p after temperature, top-k and top-p (float64, -inf outside the kept set).

    `logits` is [..., V]. top-k keeps every token whose logit ties the k-th largest; top-p keeps
    the smallest prefix of tokens (by decreasing probability) whose mass reaches top_p.
    """
    scaled = logits.to(torch.float64) / float(params.temperature)
    logp = torch.log_softmax(scaled, dim=-1)
    if params.top_k and params.top_k < logp.shape[-1]:
        kth = torch.topk(logp, params.top_k, dim=-1).values[..., -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if params.top_p < 1.0:
        sorted_lp, order = torch.sort(logp, dim=-1, descending=True)
        cum = torch.cumsum(sorted_lp.exp(), dim=-1)
        # keep a token if the mass before it is still below top_p (the first is always kept)
        remove_sorted = (cum - sorted_lp.exp()) >= params.top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logp = logp.masked_fill(remove, -math.inf)
    return torch.log_softmax(logp, dim=-1)


def decision_scores(logits: torch.Tensor, params: SamplingParams, positions: list[int]) -> torch.Tensor:
    """Scores whose argmax is the target's token at each of `positions` (rows of `logits`)."""
    if params.greedy:
        return logits.to(torch.float64)
    if params.seed is None:
        raise ValueError("sampled decoding needs a seed (the engine draws one when none is given)")
    logp = filtered_logprobs(logits, params)
    vocab = logits.shape[-1]
    noise = torch.from_numpy(np.stack([gumbel_noise(params.seed, p, vocab) for p in positions]))
    return logp + noise


def choose(scores: torch.Tensor) -> tuple[list[int], list[float]]:
    """Argmax per row (lowest id on exact ties) and the top-1 minus top-2 margin."""
    top2 = torch.topk(scores, 2, dim=-1)
    ids = torch.argmax(scores, dim=-1).tolist()
    margins = (top2.values[..., 0] - top2.values[..., 1]).tolist()
    return ids, [float(m) if math.isfinite(m) else float("inf") for m in margins]
