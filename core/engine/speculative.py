"""The built-in speculative engine: one target forward per step verifies a whole draft.

Per step (cf. gpt-fast's `speculative_decode`):
1. ask the drafter for up to k tokens (k adapts: +1 after full acceptance, down to the
   accepted count + 1 after a rejection);
2. check the proposal's shape; a malformed proposal is dropped as a whole and counted;
3. run the target once over the uncached tokens plus the draft, keeping k+1 logits rows;
4. for each draft token, compute the target's own choice (argmax, or Gumbel-max argmax for
   sampled requests); accept while they agree; emit the target's choice at the first
   disagreement, or a bonus token after full acceptance;
5. roll the KV cache back to the accepted prefix.

Every emitted token is the target's choice, so the output depends only on (model, prompt,
parameters, seed): never on the drafter. `speculative-sampling` mode (Leviathan et al. Alg. 1)
is available for trusted local drafters only and is not re-derivable.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..drafters.base import Drafter, Proposal
from ..errors import RequestError
from ..models import LoadedModel
from ..transcript import SamplingParams, Step, TokenRecord, Transcript
from . import kv
from .sampling import choose, decision_scores

MAX_TOP_LOGPROBS = 20


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


@dataclass
class StepEvent:
    """What the engine yields while streaming: the tokens one step made final."""

    step: Step
    tokens: list[TokenRecord]


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
    """Target-verified speculative decoding over a LoadedModel."""

    name = "specguard"

    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter | None = None,
        *,
        top_logprobs: int = 5,
        draft_length: DraftLength | None = None,
        min_verify_rows: int = MIN_VERIFY_ROWS,
    ) -> None:
        from ..drafters.base import NoDrafter

        self.target = target
        self.drafter = drafter or NoDrafter()
        self.top_logprobs = top_logprobs
        self.draft_length = draft_length or DraftLength(maximum=int(getattr(self.drafter, "max_draft", 12)))
        if min_verify_rows < 1:
            raise ValueError("min_verify_rows must be at least 1")
        self.min_verify_rows = min_verify_rows

    # -- public API -----------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], params: SamplingParams, **kw: Any) -> Transcript:
        """Run to completion and return the transcript."""
        stream = self.stream(prompt_ids, params, **kw)
        while True:
            try:
                next(stream)
            except StopIteration as done:
                return done.value

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_step: Callable[[Step], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        top_logprobs: int | None = None,
    ) -> Iterator[StepEvent]:
        """Yield a StepEvent per verification step; return the Transcript."""
        top_n = self.top_logprobs if top_logprobs is None else top_logprobs
        if not 0 <= top_n <= MAX_TOP_LOGPROBS:
            raise RequestError("top_logprobs out of range", field="top_logprobs", got=top_n, expected=f"0..{MAX_TOP_LOGPROBS}")
        prompt_ids = [int(t) for t in prompt_ids]
        target = self.target
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
        if not params.greedy and params.seed is None:
            # randomness comes only from the verifier; the seed is recorded so the output is re-derivable
            params = replace(params, seed=secrets.randbits(63))
        spec_sampling = params.mode == "speculative-sampling" and not params.greedy
        if spec_sampling and not self.drafter.trusted:
            raise RequestError("speculative-sampling mode needs a trusted local drafter", field="mode", got=self.drafter.name)
        rng = np.random.Generator(np.random.Philox(key=params.seed or 0)) if spec_sampling else None

        model = target.model
        cache = kv.new_cache(model)
        tokens = list(prompt_ids)
        cached = 0
        output: list[int] = []
        records: list[TokenRecord] = []
        steps: list[Step] = []
        eos = params.stop_token_ids(target.eos_token_ids)
        budget = min(params.max_tokens, target.max_context - len(prompt_ids))
        finish = "length"
        start = time.perf_counter()
        first_token_at = 0.0
        self.drafter.start(prompt_ids, params)
        try:
            while len(output) < budget:
                if should_stop is not None and should_stop():
                    finish = "cancelled"
                    break
                k = self.draft_length.k
                if self.drafter.cheap_drafts:  # rows up to min_verify_rows are paid for anyway (pad_rows)
                    k = max(k, self.min_verify_rows - 1)
                k = max(0, min(k, budget - len(output) - 1))
                t0 = time.perf_counter()
                rejected: str | None = None
                try:
                    proposal = self.drafter.propose(list(tokens), k) if k > 0 else Proposal([])
                except Exception as exc:  # an untrusted drafter failing is counted, never fatal
                    proposal, rejected = Proposal([]), f"drafter raised {type(exc).__name__}: {exc}"[:200]
                if rejected is None:
                    rejected = validate_proposal(proposal, k, vocab, want_probs=spec_sampling)
                draft = [] if rejected else [int(t) for t in proposal.tokens]
                t1 = time.perf_counter()

                n_rows = len(draft) + 1
                pad = pad_rows(draft, self.min_verify_rows)
                with torch.inference_mode():
                    logits = kv.forward(model, tokens[cached:] + draft + pad, cache, n_rows + len(pad))[:n_rows]
                positions = list(range(len(output), len(output) + n_rows))
                if spec_sampling:
                    emitted, n_acc = self._speculative_sampling(logits, draft, proposal.probs, params, rng)
                    margins = [float("inf")] * len(emitted)
                else:
                    chosen, margins = choose(decision_scores(logits, params, positions))
                    n_acc = 0
                    while n_acc < len(draft) and draft[n_acc] == chosen[n_acc]:
                        n_acc += 1
                    emitted = draft[:n_acc] + [chosen[n_acc]]
                # stop at EOS and at the budget
                for i, tok in enumerate(emitted):
                    if tok in eos:
                        emitted = emitted[: i + 1]
                        finish = "stop"
                        break
                emitted = emitted[: budget - len(output)]
                n_acc = min(n_acc, len(emitted))
                # roll the cache back: keep everything but the last emitted token
                tokens.extend(emitted)
                cached = len(tokens) - 1
                kv.crop(cache, cached)
                t2 = time.perf_counter()

                logp = torch.log_softmax(logits[: len(emitted)], dim=-1)
                top = torch.topk(logp, top_n, dim=-1) if top_n else None
                new_records = []
                for i, tok in enumerate(emitted):
                    new_records.append(
                        TokenRecord(
                            position=len(output) + i,
                            token_id=tok,
                            logprob=float(logp[i, tok]),
                            top=list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)) if top is not None else [],
                            margin=margins[i] if i < len(margins) else float("inf"),
                        )
                    )
                output.extend(emitted)
                records.extend(new_records)
                if not first_token_at:
                    first_token_at = time.perf_counter() - start
                step = Step(
                    index=len(steps),
                    drafter=self.drafter.name,
                    drafted=draft,
                    accepted=n_acc,
                    emitted=list(emitted),
                    rejected_proposal=rejected,
                    draft_seconds=t1 - t0,
                    verify_seconds=t2 - t1,
                )
                steps.append(step)
                self.drafter.observe(len(draft), n_acc)
                self.draft_length.update(len(draft), n_acc)
                if on_step is not None:
                    on_step(step)
                stop_at = self._stop_string_cut(output, params.stop)
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
        text = target.decode(output)
        if params.stop and finish == "stop":
            text = _cut_text(text, params.stop)
        return Transcript(
            model_name=target.name,
            model_digest=target.digest,
            tokenizer_digest=target.tokenizer_digest,
            prompt_ids=prompt_ids,
            output_ids=output,
            tokens=records,
            steps=steps,
            params=params,
            finish_reason=finish,
            drafter=self.drafter.name,
            drafter_trusted=self.drafter.trusted,
            engine=self.name,
            text=text,
            seconds=time.perf_counter() - start,
            first_token_seconds=first_token_at,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _stop_string_cut(self, output: list[int], stops: tuple[str, ...]) -> int | None:
        """The shortest token prefix whose text contains a stop string, or None."""
        if not stops:
            return None
        text = self.target.decode(output)
        if not any(s in text for s in stops):
            return None
        for n in range(1, len(output) + 1):
            partial = self.target.decode(output[:n])
            if any(s in partial for s in stops):
                return n
        return len(output)

    @staticmethod
    def _speculative_sampling(
        logits: torch.Tensor, draft: list[int], q: Any, params: SamplingParams, rng: np.random.Generator
    ) -> tuple[list[int], int]:
        """Leviathan et al. Algorithm 1 with the verifier's own random numbers."""
        from .sampling import filtered_logprobs

        p = filtered_logprobs(logits, params).exp()
        for i, tok in enumerate(draft):
            qi = q[i].to(torch.float64)
            ratio = float(p[i, tok]) / max(float(qi[tok]), 1e-300)
            if rng.random() < min(1.0, ratio):
                continue
            residual = torch.clamp(p[i] - qi, min=0)
            total = float(residual.sum())
            dist = residual / total if total > 0 else p[i]
            return draft[:i] + [_sample(dist, rng)], i
        return draft + [_sample(p[len(draft)], rng)], len(draft)


def _sample(dist: torch.Tensor, rng: np.random.Generator) -> int:
    cdf = torch.cumsum(dist, dim=0)
    u = rng.random() * float(cdf[-1])
    return int(min(int(torch.searchsorted(cdf, torch.tensor(u, dtype=cdf.dtype))), dist.shape[0] - 1))


def _cut_text(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


