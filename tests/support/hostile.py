"""In-process hostile and malformed drafters for engine tests."""

from __future__ import annotations

import random

import torch

from specguard.drafters.base import Drafter, Proposal
from specguard.engine import kv


class LeastLikelyDrafter(Drafter):
    """Always proposes the target's least likely next token (computed with the target itself)."""

    name = "hostile-least-likely"

    def __init__(self, target) -> None:
        self.target = target

    @torch.inference_mode()
    def propose(self, context, k):
        out, ctx = [], list(context)
        for _ in range(k):
            logits = kv.forward(self.target.model, ctx, kv.new_cache(self.target.model), 1)[0]
            tok = int(torch.argmin(logits))
            out.append(tok)
            ctx.append(tok)
        return Proposal(out)


class RandomIdsDrafter(Drafter):
    name = "hostile-random"

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab = vocab
        self.rng = random.Random(seed)

    def propose(self, context, k):
        return Proposal([self.rng.randrange(self.vocab) for _ in range(k)])


class MalformedDrafter(Drafter):
    """Cycles through every kind of malformed proposal, and sometimes raises."""

    name = "hostile-malformed"

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.i = 0

    def propose(self, context, k):
        self.i += 1
        kinds = [
            lambda: Proposal([self.vocab + 5]),  # outside the vocabulary
            lambda: Proposal([-1]),  # negative
            lambda: Proposal([0] * (k + 3)),  # more than asked
            lambda: Proposal([True]),  # a bool is not a token id
            lambda: Proposal(["7"]),  # wrong type
            lambda: Proposal([1.5]),  # float
            lambda: Proposal((1, 2)),  # not a list
            lambda: Proposal([0], probs=torch.full((1, self.vocab), float("nan"))),  # NaN q
            lambda: "not a proposal",
            lambda: (_ for _ in ()).throw(RuntimeError("drafter crashed")),
        ]
        return kinds[self.i % len(kinds)]()


class ScriptedDrafter(Drafter):
    """Proposes the known reference continuation (perfect drafter) - used to test multi-token verification."""

    name = "scripted"
    cheap_drafts = True

    def __init__(self, prompt_len: int, continuation: list[int]) -> None:
        self.prompt_len = prompt_len
        self.continuation = continuation

    def propose(self, context, k):
        done = len(context) - self.prompt_len
        return Proposal(list(self.continuation[done : done + k]))
