"""The drafter interface. Drafters are untrusted proposers: nothing they return can change
the output, only how many target forward passes it takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
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

    def shared_drafting_key(self) -> tuple[Any, ...] | None:
        """Requests whose drafters return the same key may be drafted together by one shared drafter
        (`make_shared_drafting`) when they run in one batch; None (the default): draft alone."""
        return None

    def make_shared_drafting(self, n_seqs: int) -> Any:
        """A shared drafter for `n_seqs` requests (see specguard.drafters.llamacpp_batch); only drafters
        that return a `shared_drafting_key` build one."""
        raise ConfigError("this drafter names no shared drafting key, so it builds no shared drafter",
                          field="drafter", got=self.name, expected="a drafter whose shared_drafting_key() is not None")


class NoDrafter(Drafter):
    """Plain decoding through the same verification loop."""

    name = "none"
    trusted = True
