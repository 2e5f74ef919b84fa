"""Asking an untrusted drafter for a proposal, and checking its shape. Bad proposals are dropped whole."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..drafters.base import Drafter, Proposal


def validate_proposal(proposal: Any, k: int, vocab_size: int, want_probs: bool) -> str | None:
    """Why a proposal is unusable, or None. Bad proposals are dropped whole, never repaired."""
    if not isinstance(proposal, Proposal):
        return f"not a Proposal ({type(proposal).__name__})"
    tokens = proposal.tokens
    if not isinstance(tokens, list):
        return "tokens is not a list"
    if len(tokens) > k:
        return f"{len(tokens)} tokens proposed, at most {k} asked"
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            return f"token {t!r} is not an integer"
        if not 0 <= int(t) < vocab_size:
            return f"token id {int(t)} outside the vocabulary [0, {vocab_size})"
    if want_probs and tokens:
        q = proposal.probs
        if not isinstance(q, torch.Tensor) or tuple(q.shape) != (len(tokens), vocab_size):
            return "q is missing or has the wrong shape"
        if not torch.isfinite(q).all() or (q < 0).any():
            return "q has NaN, infinite or negative entries"
        if (q.sum(dim=-1) - 1).abs().max() > 1e-3:
            return "q rows do not sum to 1"
    return None


def ask_drafter(
    drafter: Drafter, context: list[int], k: int, vocab_size: int, want_probs: bool
) -> tuple[list[int], Any, str | None]:
    """(draft, q, why rejected): the drafter's checked proposal of at most k tokens.

    A drafter that raises or returns a malformed proposal is never fatal: the draft is empty
    and the reason is returned (recorded in Step.rejected_proposal).
    """
    rejected: str | None = None
    try:
        proposal = drafter.propose(list(context), k) if k > 0 else Proposal([])
    except Exception as exc:  # an untrusted drafter failing is counted, never fatal
        proposal, rejected = Proposal([]), f"drafter raised {type(exc).__name__}: {exc}"[:200]
    if rejected is None:
        rejected = validate_proposal(proposal, k, vocab_size, want_probs=want_probs)
    if rejected:
        return [], None, rejected
    return [int(t) for t in proposal.tokens], proposal.probs, None
