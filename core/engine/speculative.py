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

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..drafters.base import Drafter, NoDrafter, Proposal
from ..llamacpp_runtime import model_file_digest
from ..models import LoadedModel
from ..transcript import SamplingParams, Step, TokenRecord, Transcript
from . import kv
from .acceptance import uses_speculative_sampling, verify_step
from .inputs import MAX_TOP_LOGPROBS, check_mode, check_prompt, check_top_logprobs, with_seed
from .interface import EngineCapabilities, EngineStream, StepCallback, StepEvent, StopCheck, drain
from .proposals import ask_drafter, validate_proposal
from .records import token_records
from .stops import cut_at_stop_token, cut_text, trim_at_stop_string

__all__ = [
    "MAX_TOP_LOGPROBS", "MIN_VERIFY_ROWS", "DraftLength", "Plan", "SpeculativeEngine", "SpeculativeRun", "StepEvent",
    "check_request", "pad_rows", "validate_proposal",
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


def check_request(
    target: LoadedModel, drafter: Drafter, prompt_ids: list[int], params: SamplingParams, top_n: int
) -> tuple[list[int], SamplingParams, int]:
    """The checked prompt, the parameters to record (seed drawn if needed) and top_logprobs.

    Raises RequestError naming the field; shared by `SpeculativeEngine` and the batch scheduler.
    """
    top_n = check_top_logprobs(top_n)
    prompt_ids = check_prompt(prompt_ids, target)
    params = with_seed(params)
    check_mode(params, drafter)
    return prompt_ids, params, top_n


@dataclass
class Plan:
    """What one request needs from the next target forward: the uncached tokens plus its draft.

    The forward must return `len(draft) + 1` logits rows: the next-token logits after the last
    uncached token and after each draft token.
    """

    uncached: list[int]
    draft: list[int]
    q: Any
    rejected: str | None
    draft_seconds: float
    verify_start: float

    @property
    def rows(self) -> int:
        return len(self.draft) + 1


class SpeculativeRun:
    """One request's decoding state: everything a verification step does except the forward pass.

    `SpeculativeEngine.stream` and the batch scheduler (`specguard.engine.batching`) drive the
    same object, so a request's drafts, acceptance, stops, records and transcript follow one code
    path whether its forward passes run alone or batched with other requests':

        run.start()
        while (plan := run.plan()) is not None:        # None once finished (stop/length/cancelled)
            logits = <target forward over plan.uncached + plan.draft, plan.rows rows>
            event = run.apply(plan, logits, crop)       # crop(n): roll the KV cache back to n tokens
        run.close(); transcript = run.transcript()

    The request must already be checked (`check_request`).
    """

    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        top_n: int,
        draft_length: DraftLength,
        min_verify_rows: int = MIN_VERIFY_ROWS,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        engine_name: str = "specguard",
    ) -> None:
        self.target = target
        self.engine_name = engine_name
        self.drafter = drafter
        self.prompt_ids = prompt_ids
        self.params = params
        self.top_n = top_n
        self.draft_length = draft_length
        self.min_verify_rows = min_verify_rows
        self.on_step = on_step
        self.should_stop = should_stop
        self.spec_sampling = uses_speculative_sampling(params)
        self.rng = np.random.Generator(np.random.Philox(key=params.seed or 0)) if self.spec_sampling else None
        self.tokens = list(prompt_ids)  # prompt + output so far
        self.cached = 0  # how many of `tokens` the KV cache holds
        self.output: list[int] = []
        self.records: list[TokenRecord] = []
        self.steps: list[Step] = []
        self.eos = params.stop_token_ids(target.eos_token_ids)
        self.budget = min(params.max_tokens, target.max_context - len(prompt_ids))
        self.finish = "length"
        self.started = 0.0
        self.ended = 0.0
        self.first_token_at = 0.0
        self._open = False

    def start(self) -> None:
        """Start the clock and the drafter (call once, before the first `plan`)."""
        self.started = time.perf_counter()
        self.drafter.start(self.prompt_ids, self.params)
        self._open = True

    @property
    def done(self) -> bool:
        return self.finish == "stop" or self.finish == "cancelled" or len(self.output) >= self.budget

    def plan(self, max_draft: int | None = None, drafted: list[int] | None = None) -> Plan | None:
        """Ask the drafter for the next draft; None when generation has ended.

        Polls `should_stop` (a True answer ends the request as "cancelled"). `max_draft` caps this
        step's draft (the batch scheduler bounds the rows of a shared forward). `drafted`: tokens a
        shared drafter already proposed for this request (the batch scheduler drafts many requests at
        once), checked like any proposal instead of asking the request's drafter. Drafts never change
        the output, only how many steps it takes.
        """
        if self.finish in ("stop", "cancelled") or len(self.output) >= self.budget:
            return None
        if self.should_stop is not None and self.should_stop():
            self.finish = "cancelled"
            return None
        k = self.draft_size(max_draft)
        proposer = self.drafter if drafted is None else _Fixed(drafted)
        t0 = time.perf_counter()
        draft, q, rejected = ask_drafter(proposer, self.tokens, k, self.target.vocab_size, self.spec_sampling)
        t1 = time.perf_counter()
        return Plan(uncached=self.tokens[self.cached:], draft=draft, q=q, rejected=rejected,
                    draft_seconds=t1 - t0, verify_start=t1)

    def apply(self, plan: Plan, logits: torch.Tensor, crop: Callable[[int], None]) -> StepEvent:
        """Decide the step from the target's `plan.rows` logits rows; `crop(n)` rolls the cache back to n."""
        output, params = self.output, self.params
        outcome = verify_step(logits, plan.draft, params, start=len(output), draft_probs=plan.q, rng=self.rng)
        emitted, hit_stop = cut_at_stop_token(outcome.emitted, self.eos)
        if hit_stop:
            self.finish = "stop"
        emitted = emitted[: self.budget - len(output)]
        accepted = min(outcome.accepted, len(emitted))
        # roll the cache back to the accepted prefix; the last emitted token is fed next step
        self.tokens.extend(emitted)
        self.cached = len(self.tokens) - 1
        crop(self.cached)
        t2 = time.perf_counter()

        new_records = token_records(logits, emitted, outcome.margins, start=len(output), top_n=self.top_n)
        output.extend(emitted)
        self.records.extend(new_records)
        if not self.first_token_at:
            self.first_token_at = time.perf_counter() - self.started
        step = Step(
            index=len(self.steps), drafter=self.drafter.name, drafted=plan.draft, accepted=accepted,
            emitted=list(emitted), rejected_proposal=plan.rejected, draft_seconds=plan.draft_seconds,
            verify_seconds=t2 - plan.verify_start,
        )
        self.steps.append(step)
        self.drafter.observe(len(plan.draft), accepted)
        self.draft_length.update(len(plan.draft), accepted)
        if self.on_step is not None:
            self.on_step(step)
        new_records, hit = trim_at_stop_string(self.target.decode, output, self.records, new_records, params.stop)
        if hit:
            self.finish = "stop"
        return StepEvent(step=step, tokens=new_records)

    def close(self) -> None:
        """Finish the drafter (once) and stop the clock."""
        if self._open:
            self._open = False
            try:
                self.drafter.finish()
            finally:
                self.ended = time.perf_counter()

    def transcript(self) -> Transcript:
        """The request's transcript (after `close`)."""
        output, params = self.output, self.params
        text = self.target.decode(output)
        if params.stop and self.finish == "stop":
            text = cut_text(text, params.stop)
        end = self.ended or time.perf_counter()
        return Transcript(
            model_name=self.target.name,
            model_digest=self.target.digest,
            tokenizer_digest=self.target.tokenizer_digest,
            prompt_ids=self.prompt_ids,
            output_ids=output,
            tokens=self.records,
            steps=self.steps,
            params=params,
            finish_reason=self.finish,
            drafter=self.drafter.name,
            drafter_trusted=self.drafter.trusted,
            engine=self.engine_name,
            engine_version=__version__ + str(getattr(self.target, "runtime_label", "")),
            model_file_digest=model_file_digest(self.target),
            text=text,
            seconds=end - self.started,
            first_token_seconds=self.first_token_at,
        )

    def draft_size(self, max_draft: int | None = None) -> int:
        """How many tokens the next `plan(max_draft)` asks the drafter for."""
        k = self._draft_budget(self.budget - len(self.output))
        return k if max_draft is None else max(0, min(k, max_draft))

    def _draft_budget(self, remaining: int) -> int:
        """How many tokens to ask the drafter for, leaving room for the target's own token."""
        k = self.draft_length.k
        if self.drafter.cheap_drafts:  # rows up to min_verify_rows are paid for anyway (pad_rows)
            k = max(k, self.min_verify_rows - 1)
        return max(0, min(k, remaining - 1))


class _Fixed(Drafter):
    """A proposal made elsewhere (a batch's shared drafter), handed to `ask_drafter` to be checked."""

    name = "shared"

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def propose(self, context: list[int], k: int) -> Proposal:
        return Proposal(list(self.tokens))


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
        label = str(getattr(target, "runtime_label", ""))
        if label:  # a non-reference runtime (e.g. torch bf16) is named after the version, in receipts too
            self.capabilities = dataclasses.replace(self.capabilities, version=__version__ + label)
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
        run = SpeculativeRun(self.target, self.drafter, prompt_ids, params, top_n=top_n,
                             draft_length=self.draft_length, min_verify_rows=self.min_verify_rows,
                             on_step=on_step, should_stop=should_stop, engine_name=self.name)
        cache = kv.new_cache(self.target.model)
        run.start()
        try:
            while (plan := run.plan()) is not None:
                logits = self._verify_forward(cache, plan.uncached, plan.draft)
                yield run.apply(plan, logits, lambda keep: kv.crop(cache, keep))
        finally:
            run.close()
        return run.transcript()

    # -- helpers ----------------------------------------------------------------------------

    def _check_request(
        self, prompt_ids: list[int], params: SamplingParams, top_logprobs: int | None
    ) -> tuple[list[int], SamplingParams, int]:
        """The checked prompt, the parameters to record (seed drawn if needed) and top_logprobs."""
        top_n = self.top_logprobs if top_logprobs is None else top_logprobs
        return check_request(self.target, self.drafter, prompt_ids, params, top_n)

    def _verify_forward(self, cache: Any, uncached: list[int], draft: list[int]) -> torch.Tensor:
        """One target forward over the uncached tokens plus the draft: len(draft)+1 logits rows."""
        n_rows = len(draft) + 1
        pad = pad_rows(draft, self.min_verify_rows)
        with torch.inference_mode():
            return kv.forward(self.target.model, uncached + draft + pad, cache, n_rows + len(pad))[:n_rows]
