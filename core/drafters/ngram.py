"""Prompt-lookup drafting: find the latest earlier occurrence of the context's last n-gram
and propose the tokens that followed it (Saxena 2023, as transformers' prompt_lookup)."""

from __future__ import annotations

from .base import Drafter, Proposal


class NgramDrafter(Drafter):
    """Propose continuations copied from the context. Tries n-gram sizes from `max_ngram`
    down to `min_ngram`; the draft length itself is adapted by the engine."""

    name = "ngram"
    trusted = True
    cheap_drafts = True

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, context: list[int], k: int) -> Proposal:
        n_ctx = len(context)
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            pattern = context[-n:]
            # search right to left, excluding the suffix itself
            for start in range(n_ctx - n - 1, -1, -1):
                if context[start : start + n] == pattern:
                    follow = context[start + n : start + n + k]
                    if follow:
                        return Proposal(list(follow))
                    break
        return Proposal([])
