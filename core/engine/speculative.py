"""The built-in speculative engine: one target forward per step verifies a whole draft.

Per step (cf. gpt-fast's `speculative_decode`):
1. ask the drafter for up to k tokens (k adapts: +1 after full acceptance, down to the
   accepted count + 1 after a rejection) and check the proposal's shape; a malformed proposal
   is dropped as a whole and counted (`proposals.ask_drafter`);
2. run the target once over the uncached tokens plus the draft, keeping k+1 logits rows;
3. decide with the acceptance rule (`acceptance.verify_step`): accept draft tokens while they
   equal the target's own choice (argmax, or Gumbel-max argmax for sampled requests); emit the
   target's choice at the first disagreement, or a bonus token after full acceptance;
4. apply stop tokens, the budget and stop strings (`stops`), build the per-token records
   (`records`), and roll the KV cache back to the accepted prefix.

Request checks live in `inputs`; the loop below only sequences these parts.

Every emitted token is the target's choice, so the output depends only on (model, prompt,
parameters, seed): never on the drafter. `speculative-sampling` mode (Leviathan et al. Alg. 1)
is available for trusted local drafters only and is not re-derivable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..drafters.base import Drafter, NoDrafter
from ..llamacpp_runtime import model_file_digest
from ..models import LoadedModel
from ..transcript import SamplingParams, Step, TokenRecord, Transcript
from . import kv
from .acceptance import uses_speculative_sampling, verify_step
from .inputs import MAX_TOP_LOGPROBS, check_mode, check_prompt, check_top_logprobs, with_seed
from .interface import EngineCapabilities, EngineStream, StepCallback, StepEvent, StopCheck, drain
from .proposals import ask_drafter, validate_proposal
from .records import token_records
from .stops import cut_at_stop_token, cut_text, stop_string_cut

__all__ = [
    "MAX_TOP_LOGPROBS", "MIN_VERIFY_ROWS", "DraftLength", "SpeculativeEngine", "StepEvent", "pad_rows",
    "validate_proposal",
]

#: Verification forwards with a draft use at least this many rows (see pad_rows).
MIN_VERIFY_ROWS = 4


@dataclass
class DraftLength:
    """Adaptive draft length: grow after full acceptance, shrink after a rejection."""

    k: int = 4
    minimum: int = 1
    maximum: int = 12

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted == drafted:
            self.k = min(self.maximum, self.k + 1)
        else:
            self.k = max(self.minimum, accepted + 1)


def pad_rows(draft: list[int], min_rows: int) -> list[int]:
    """Filler tokens that bring a verification forward of len(draft)+1 rows up to `min_rows` rows.

    Causal attention means rows after the draft cannot change the draft's logits; their logits are
    dropped and their cache entries cropped. Why pad at all: on CPUs, fp32 GEMMs with 2-3 rows run
    as 2-3 matrix-vector passes over the weights while 4+ rows run as one blocked GEMM, so a
    4-row forward is cheaper than a 2- or 3-row one (docs/benchmarks.md). Plain decoding (no
    draft) is never padded.
    """
    if not draft or len(draft) + 1 >= min_rows:
        return []
    return [draft[-1]] * (min_rows - len(draft) - 1)


class SpeculativeEngine:
    """Target-verified speculative decoding over a LoadedModel (implements `Engine`)."""

    name = "specguard"
    capabilities = EngineCapabilities(
        rederivable=True,
        uses_drafter=True,
        logprobs=True,
        max_top_logprobs=MAX_TOP_LOGPROBS,
        sampling_modes=("gumbel", "speculative-sampling"),
        version=__version__,
    )

    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter | None = None,
        *,
        top_logprobs: int = 5,
        draft_length: DraftLength | None = None,
        min_verify_rows: int = MIN_VERIFY_ROWS,
    ) -> None:
        self.target = target
        self.drafter = drafter or NoDrafter()
        self.top_logprobs = top_logprobs
        self.draft_length = draft_length or DraftLength(maximum=int(getattr(self.drafter, "max_draft", 12)))
        if min_verify_rows < 1:
            raise ValueError("min_verify_rows must be at least 1")
        self.min_verify_rows = min_verify_rows

    # -- public API -----------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        top_logprobs: int | None = None,
    ) -> Transcript:
        """Run to completion and return the transcript."""
        return drain(self.stream(prompt_ids, params, on_step=on_step, should_stop=should_stop, top_logprobs=top_logprobs))

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        top_logprobs: int | None = None,
    ) -> EngineStream:
        """Yield a StepEvent per verification step; return the Transcript."""
        prompt_ids, params, top_n = self._check_request(prompt_ids, params, top_logprobs)
        spec_sampling = uses_speculative_sampling(params)
        rng = np.random.Generator(np.random.Philox(key=params.seed or 0)) if spec_sampling else None

        cache = kv.new_cache(self.target.model)
        tokens = list(prompt_ids)  # prompt + output so far
        cached = 0  # how many of `tokens` the KV cache holds
        output: list[int] = []
        records: list[TokenRecord] = []
        steps: list[Step] = []
        eos = params.stop_token_ids(self.target.eos_token_ids)
        budget = min(params.max_tokens, self.target.max_context - len(prompt_ids))
        finish = "length"
        start = time.perf_counter()
        first_token_at = 0.0
        self.drafter.start(prompt_ids, params)
        try:
            while len(output) < budget:
                if should_stop is not None and should_stop():
                    finish = "cancelled"
                    break
                k = self._draft_budget(budget - len(output))
                t0 = time.perf_counter()
                draft, q, rejected = ask_drafter(self.drafter, tokens, k, self.target.vocab_size, spec_sampling)
                t1 = time.perf_counter()
                logits = self._verify_forward(cache, tokens[cached:], draft)
                outcome = verify_step(logits, draft, params, start=len(output), draft_probs=q, rng=rng)
                emitted, hit_stop = cut_at_stop_token(outcome.emitted, eos)
                if hit_stop:
                    finish = "stop"
                emitted = emitted[: budget - len(output)]
                accepted = min(outcome.accepted, len(emitted))
                # roll the cache back to the accepted prefix; the last emitted token is fed next step
                tokens.extend(emitted)
                cached = len(tokens) - 1
                kv.crop(cache, cached)
                t2 = time.perf_counter()

                new_records = token_records(logits, emitted, outcome.margins, start=len(output), top_n=top_n)
                output.extend(emitted)
                records.extend(new_records)
                if not first_token_at:
                    first_token_at = time.perf_counter() - start
                step = Step(
                    index=len(steps), drafter=self.drafter.name, drafted=draft, accepted=accepted, emitted=list(emitted),
                    rejected_proposal=rejected, draft_seconds=t1 - t0, verify_seconds=t2 - t1,
                )
                steps.append(step)
                self.drafter.observe(len(draft), accepted)
                self.draft_length.update(len(draft), accepted)
                if on_step is not None:
                    on_step(step)
                stop_at = stop_string_cut(self.target.decode, output, params.stop)
                if stop_at is not None:
                    cut = len(output) - stop_at
                    del output[stop_at:]
                    del records[stop_at:]
                    new_records = new_records[: max(0, len(new_records) - cut)]
                    finish = "stop"
                yield StepEvent(step=step, tokens=new_records)
                if finish == "stop":
                    break
        finally:
            self.drafter.finish()
        return self._transcript(prompt_ids, output, records, steps, params, finish,
                                seconds=time.perf_counter() - start, first_token_seconds=first_token_at)

    # -- helpers ----------------------------------------------------------------------------

    def _check_request(
        self, prompt_ids: list[int], params: SamplingParams, top_logprobs: int | None
    ) -> tuple[list[int], SamplingParams, int]:
        """The checked prompt, the parameters to record (seed drawn if needed) and top_logprobs."""
        top_n = check_top_logprobs(self.top_logprobs if top_logprobs is None else top_logprobs)
        prompt_ids = check_prompt(prompt_ids, self.target)
        params = with_seed(params)
        check_mode(params, self.drafter)
        return prompt_ids, params, top_n

    def _draft_budget(self, remaining: int) -> int:
        """How many tokens to ask the drafter for, leaving room for the target's own token."""
        k = self.draft_length.k
        if self.drafter.cheap_drafts:  # rows up to min_verify_rows are paid for anyway (pad_rows)
            k = max(k, self.min_verify_rows - 1)
        return max(0, min(k, remaining - 1))

    def _verify_forward(self, cache: Any, uncached: list[int], draft: list[int]) -> torch.Tensor:
        """One target forward over the uncached tokens plus the draft: len(draft)+1 logits rows."""
        n_rows = len(draft) + 1
        pad = pad_rows(draft, self.min_verify_rows)
        with torch.inference_mode():
            return kv.forward(self.target.model, uncached + draft + pad, cache, n_rows + len(pad))[:n_rows]

    def _transcript(
        self, prompt_ids: list[int], output: list[int], records: list[TokenRecord], steps: list[Step],
        params: SamplingParams, finish: str, *, seconds: float, first_token_seconds: float,
    ) -> Transcript:
        text = self.target.decode(output)
        if params.stop and finish == "stop":
            text = cut_text(text, params.stop)
        return Transcript(
            model_name=self.target.name,
            model_digest=self.target.digest,
            tokenizer_digest=self.target.tokenizer_digest,
            prompt_ids=prompt_ids,
            output_ids=output,
            tokens=records,
            steps=steps,
            params=params,
            finish_reason=finish,
            drafter=self.drafter.name,
            drafter_trusted=self.drafter.trusted,
            engine=self.name,
            engine_version=self.capabilities.version,
            model_file_digest=model_file_digest(self.target),
            text=text,
            seconds=seconds,
            first_token_seconds=first_token_seconds,
        )
