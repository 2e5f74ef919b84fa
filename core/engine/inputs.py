"""Request checks the engine makes before its first step. Each raises RequestError naming the field."""

from __future__ import annotations

import secrets
from dataclasses import replace

from ..drafters.base import Drafter
from ..errors import RequestError
from ..models import LoadedModel
from ..transcript import SamplingParams

MAX_TOP_LOGPROBS = 20


def check_top_logprobs(top_n: int, maximum: int = MAX_TOP_LOGPROBS) -> int:
    """`top_n` if it is in 0..maximum."""
    if not 0 <= top_n <= maximum:
        raise RequestError("top_logprobs out of range", field="top_logprobs", got=top_n, expected=f"0..{maximum}")
    return top_n


def check_prompt(prompt_ids: list[int], target: LoadedModel) -> list[int]:
    """The prompt as a list of ints: non-empty, inside the vocabulary, shorter than the context."""
    prompt_ids = [int(t) for t in prompt_ids]
    vocab = target.vocab_size
    if not prompt_ids:
        raise RequestError("the prompt is empty", field="prompt")
    bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError("prompt token id outside the vocabulary", field="prompt", got=bad, expected=f"0..{vocab - 1}")
    if len(prompt_ids) >= target.max_context:
        raise RequestError(
            "prompt is longer than the model's context", field="prompt", got=len(prompt_ids), expected=f"< {target.max_context}"
        )
    return prompt_ids


def with_seed(params: SamplingParams) -> SamplingParams:
    """`params`, with a seed drawn by the verifier when a sampled request has none.

    Randomness comes only from the verifier; the seed is recorded so the output is re-derivable.
    """
    if not params.greedy and params.seed is None:
        return replace(params, seed=secrets.randbits(63))
    return params


def check_mode(params: SamplingParams, drafter: Drafter) -> None:
    """speculative-sampling reads the drafter's q: only a trusted local drafter may take part."""
    from .acceptance import uses_speculative_sampling  # torch: only engines that take drafts check modes

    if uses_speculative_sampling(params) and not drafter.trusted:
        raise RequestError("speculative-sampling mode needs a trusted local drafter", field="mode", got=drafter.name)
