"""The drafter interface. Drafters are untrusted proposers: nothing they return can change
the output, only how many target forward passes it takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..transcript import SamplingParams


@dataclass
class Proposal:
    """Draft tokens, and optionally the drafter's distributions q (one row per token).

    `probs` is only ever read in `speculative-sampling` mode with a trusted local drafter;
    the engine ignores it otherwise (a remote drafter's probabilities are never used).
    """

    tokens: list[int]
    probs: Any = None


class Drafter:
    """Base class: propose up to `k` tokens continuing `context`."""

    name: str = "base"
    #: trusted drafters may receive the sampling seed (to draft with the same noise) and
    #: may take part in speculative-sampling mode; untrusted ones never do
    trusted: bool = False
    #: proposing costs next to nothing (a lookup, no model forward), so the engine asks for
    #: enough tokens to fill every verification row it pays for anyway (see engine.pad_rows)
    cheap_drafts: bool = False
    #: the longest draft the engine's adaptive draft length may grow to for this drafter; engine
    #: drafters (llamacpp) that propose long runs the target accepts declare more (32)
    max_draft: int = 12
    #: under continuous batching, drafts are not capped below this many tokens when a batch's row cap
    #: would leave less (a drafter whose drafts are mostly accepted pays for its rows; 0: no floor)
    batch_min_draft: int = 0

    def start(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Called once per request before the first proposal."""

    def propose(self, context: list[int], k: int) -> Proposal:
        """Propose up to k tokens that continue `context` (prompt + output so far)."""
        return Proposal([])

    def observe(self, drafted: int, accepted: int) -> None:
        """Feedback after each verification step (for adaptive drafters)."""

    def finish(self) -> None:
        """Called once per request after the last step (release per-request state)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "trusted": self.trusted}

    def shared_lease(self) -> Any:
        """The shared drafter and sequence this request drafts through, when other requests may be drafted
        together with it: an object with `.drafting` (whose `propose_many([(seq, context, k), ...])` drafts
        many sequences at once) and `.seq`. Requests of one batch whose leases name the same `.drafting`
        are drafted in one call (specguard.engine.batching); None (the default): draft alone."""
        return None


class NoDrafter(Drafter):
    """Plain decoding through the same verification loop."""

    name = "none"
    trusted = True
