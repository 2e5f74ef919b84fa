"""A target engine around transformers' own `model.generate` (registered as "transformers").

What it runs: plain greedy decoding, prompt lookup (`prompt_lookup_num_tokens`, chosen when the
request's drafter is `ngram`) or assisted generation (`assistant_model`, chosen when the drafter is
a `draft-model` drafter holding a transformers model). Any other drafter is ignored (plain
decoding): the engine never asks a specguard drafter for proposals, so `uses_drafter=False`.

Why its outputs are re-derivable: every token is chosen by `GumbelMaxChooser`, a `LogitsProcessor`
that computes specguard's decision scores (`sampling.decision_scores`: the logits for greedy, or
log p after temperature/top-k/top-p plus the Gumbel noise of (seed, output position)) in float64,
picks their argmax with `sampling.choose`, and hands `generate` a score row whose only maximum is
that token. `generate` runs with `do_sample=False`, so its own greedy selection takes exactly that
token, on every path:

- plain decoding (`_sample`): the processor sees `input_ids` of length prompt + t at output
  position t;
- assisted / prompt-lookup decoding (`_assisted_decoding`): row i of a verification forward is
  processed with `candidate_input_ids[:, :cur_len + i]`, so the position is again the prefix length
  minus the prompt length; the accepted tokens are the candidates equal to the chosen ones, plus the
  chosen token after them. The assistant model's own `generate` gets the same processor (so a
  trusted draft model drafts with the same noise), and prompt lookup calls it on fake all-ones
  logits to screen candidates; the returned rows are finite (-1e30, never -inf) so no candidate is
  screened out. Those calls do not affect the target's rows (recorded per position, last write
  wins: the target's rows for a step are processed after its drafts and before the step's tokens
  are streamed).

Logprobs and margins come from the raw (unprocessed) float32 logits of the rows that chose each
token, which are what `generate(output_logits=True)` returns; tests compare the two.

Streaming: `generate` runs in a worker thread with a lockstep `BaseStreamer`: each `put` (one per
target forward) hands the step's tokens to the consumer and waits for it to say go on or stop, so
stop strings, stop tokens, `should_stop` and a closed stream end generation at a step boundary
without racing the worker. A `StoppingCriteria` reads the same flag.

Refused: models whose `generation_config` would add logits processors of its own (a repetition
penalty, suppressed tokens, ...): they would change the logits before specguard's choice.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import torch
import transformers
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from ..drafters.base import Drafter, NoDrafter
from ..errors import RequestError, UsageError
from ..llamacpp_runtime import model_file_digest
from ..models import LoadedModel
from ..transcript import SamplingParams, Step, TokenRecord, Transcript
from .inputs import MAX_TOP_LOGPROBS, check_prompt, check_top_logprobs, with_seed
from .interface import EngineCapabilities, EngineStream, StepCallback, StepEvent, StopCheck, drain
from .records import token_records
from .sampling import choose, decision_scores
from .stops import cut_at_stop_token, cut_text, trim_at_stop_string

#: Score given to every token but the chosen one: finite, so prompt lookup's candidate screening
#: (which treats -inf and the dtype minimum as "forbidden") never drops a candidate.
_NOT_CHOSEN = -1e30

#: generation_config fields that make `generate` add a logits processor when set (their neutral
#: value is the `GenerationConfig()` default). A model that sets one is refused.
_PROCESSOR_FIELDS = (
    "guidance_scale", "sequence_bias", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "watermarking_config", "renormalize_logits",
)

#: How many tokens prompt lookup copies per step (transformers' default is 10).
PROMPT_LOOKUP_TOKENS = 10


def check_generation_config(model: Any) -> None:
    """Raise UsageError if the model's generation_config adds logits processors of its own."""
    neutral = GenerationConfig()
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    for key in _PROCESSOR_FIELDS:
        value, default = getattr(config, key, None), getattr(neutral, key, None)
        if value is not None and value != default:
            raise UsageError(
                "the model's generation_config changes logits before specguard's sampling",
                field=f"generation_config.{key}", got=repr(value), expected=repr(default),
            )


class _RowLog:
    """The target's rows by output position: raw logits, chosen token, decision margin."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[torch.Tensor, int, float]] = {}
        self.last_prefix: list[int] = []  # input_ids of the latest call (its tail is the step's draft)

    def take(self, start: int, n: int) -> tuple[torch.Tensor, list[int], list[float]]:
        rows = [self.rows.pop(p) for p in range(start, start + n)]
        for p in [p for p in self.rows if p < start + n]:
            del self.rows[p]
        return torch.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows]


class GumbelMaxChooser(LogitsProcessor):
    """specguard's choice rule as a transformers LogitsProcessor (see the module docstring).

    The position of a row is `input_ids.shape[1] - prompt_len`; the returned row has 0.0 at the
    chosen token and -1e30 elsewhere, so any argmax `generate` takes picks the chosen token.
    """

    def __init__(self, params: SamplingParams, prompt_len: int, log: _RowLog | None = None) -> None:
        self.params = params
        self.prompt_len = prompt_len
        self.log = log

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, _NOT_CHOSEN)
        position = int(input_ids.shape[1]) - self.prompt_len
        for b in range(scores.shape[0]):
            ids, margins = choose(decision_scores(scores[b : b + 1], self.params, [position]))
            out[b, ids[0]] = 0.0
            if self.log is not None and b == 0:
                self.log.rows[position] = (scores[0].detach().float().clone(), ids[0], margins[0])
                self.log.last_prefix = input_ids[0].tolist()
        return out


class _Flag(StoppingCriteria):
    """Ends `generate` at the next step boundary once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _LockstepStreamer(BaseStreamer):
    """Hands each step's tokens (and their rows) to the consumer and waits for go / stop."""

    def __init__(self, log: _RowLog, prompt_len: int) -> None:
        self.log = log
        self.prompt_len = prompt_len
        self.chunks: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.acks: queue.Queue[bool] = queue.Queue()
        self.stopped = threading.Event()
        self._seen_prompt = False
        self._emitted = 0

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first streams the prompt
            self._seen_prompt = True
            return
        if self.stopped.is_set():
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        start = self._emitted
        logits, chosen, margins = self.log.take(start, len(ids))
        prefix = self.log.last_prefix
        cur_len = self.prompt_len + start
        draft = prefix[cur_len:] if len(prefix) > cur_len else []
        self._emitted += len(ids)
        self.chunks.put(("step", (ids, logits, chosen, margins, draft)))
        if not self.acks.get():
            self.stopped.set()

    def end(self) -> None:
        pass  # the worker reports the end itself (also when generate raises)


class TransformersEngine:
    """Target engine wrapping `model.generate` (implements `specguard.engine.interface.Engine`)."""

    name = "transformers"
    capabilities = EngineCapabilities(
        rederivable=True,
        uses_drafter=False,
        logprobs=True,
        max_top_logprobs=MAX_TOP_LOGPROBS,
        sampling_modes=("gumbel",),
        version=f"transformers {transformers.__version__}",
    )

    def __init__(self, target: LoadedModel, drafter: Drafter | None = None, *, top_logprobs: int = 5,
                 prompt_lookup_tokens: int = PROMPT_LOOKUP_TOKENS) -> None:
        check_generation_config(target.model)
        self.target = target
        self.drafter = drafter or NoDrafter()
        self.top_logprobs = top_logprobs
        self.prompt_lookup_tokens = prompt_lookup_tokens

    # -- which of generate's strategies the drafter maps to -------------------------------------

    def strategy(self) -> tuple[str, dict[str, Any]]:
        """(name, generate kwargs): prompt lookup for `ngram`, assisted for a draft model, else plain."""
        if self.drafter.name == "ngram":
            return "ngram", {"prompt_lookup_num_tokens": self.prompt_lookup_tokens}
        assistant = getattr(self.drafter, "model", None)
        if self.drafter.name == "draft-model" and isinstance(assistant, transformers.PreTrainedModel):
            return "draft-model", {"assistant_model": assistant}
        return "none", {}

    # -- Engine API -----------------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], params: SamplingParams, *, on_step: StepCallback | None = None,
                 should_stop: StopCheck | None = None, top_logprobs: int | None = None) -> Transcript:
        """Run to completion and return the transcript."""
        return drain(self.stream(prompt_ids, params, on_step=on_step, should_stop=should_stop, top_logprobs=top_logprobs))

    def stream(self, prompt_ids: list[int], params: SamplingParams, *, on_step: StepCallback | None = None,
               should_stop: StopCheck | None = None, top_logprobs: int | None = None) -> EngineStream:
        """Yield a StepEvent per target forward of `generate`; return the Transcript."""
        top_n = check_top_logprobs(self.top_logprobs if top_logprobs is None else top_logprobs)
        prompt_ids = check_prompt(prompt_ids, self.target)
        if params.mode not in self.capabilities.sampling_modes:
            raise RequestError("sampling mode not offered by the transformers engine", field="mode", got=params.mode,
                               expected=self.capabilities.sampling_modes)
        params = with_seed(params)
        budget = min(params.max_tokens, self.target.max_context - len(prompt_ids))
        stop_ids = params.stop_token_ids(self.target.eos_token_ids)
        strategy, extra = self.strategy()

        output: list[int] = []
        records: list[TokenRecord] = []
        steps: list[Step] = []
        finish = "length"
        start = time.perf_counter()
        first_token_at = 0.0
        if should_stop is not None and should_stop():
            return self._transcript(prompt_ids, output, records, steps, params, "cancelled", strategy,
                                    seconds=time.perf_counter() - start, first_token_seconds=0.0)

        log = _RowLog()
        streamer = _LockstepStreamer(log, len(prompt_ids))
        worker = threading.Thread(
            target=self._run, args=(prompt_ids, params, budget, sorted(stop_ids), extra, log, streamer),
            name="specguard-transformers-generate", daemon=True,
        )
        worker.start()
        try:
            t_step = time.perf_counter()
            while True:
                kind, payload = streamer.chunks.get()
                if kind == "error":
                    raise payload
                if kind == "done":
                    break
                ids, logits, chosen, margins, draft = payload
                t_now = time.perf_counter()
                emitted, hit_stop = cut_at_stop_token(ids, stop_ids)
                if hit_stop:
                    finish = "stop"
                emitted = emitted[: budget - len(output)]
                new_records = token_records(logits, emitted, margins, start=len(output), top_n=top_n)
                output.extend(emitted)
                records.extend(new_records)
                if not first_token_at:
                    first_token_at = t_now - start
                step = Step(index=len(steps), drafter=strategy, drafted=list(draft) if strategy != "none" else [],
                            accepted=max(0, len(emitted) - 1) if strategy != "none" else 0, emitted=list(emitted),
                            verify_seconds=t_now - t_step)
                steps.append(step)
                if on_step is not None:
                    on_step(step)
                new_records, hit = trim_at_stop_string(self.target.decode, output, records, new_records, params.stop)
                if hit:
                    finish = "stop"
                if len(output) >= budget and finish != "stop":
                    finish = "length"
                yield StepEvent(step=step, tokens=new_records)
                if finish == "stop" or len(output) >= budget:
                    break
                if should_stop is not None and should_stop():
                    finish = "cancelled"
                    break
                t_step = time.perf_counter()
                streamer.acks.put(True)
        finally:
            streamer.stopped.set()
            streamer.acks.put(False)  # releases a worker waiting in put(); harmless otherwise
            worker.join()
        return self._transcript(prompt_ids, output, records, steps, params, finish, strategy,
                                seconds=time.perf_counter() - start, first_token_seconds=first_token_at)

    # -- helpers --------------------------------------------------------------------------------

    def _run(self, prompt_ids: list[int], params: SamplingParams, budget: int, stop_ids: list[int],
             extra: dict[str, Any], log: _RowLog, streamer: _LockstepStreamer) -> None:
        """The worker: one `generate` call; reports "done" or the exception it raised."""
        try:
            ids = torch.tensor([prompt_ids])
            config = GenerationConfig(
                max_new_tokens=budget, do_sample=False, num_beams=1, eos_token_id=stop_ids,
                pad_token_id=stop_ids[0] if stop_ids else 0, use_cache=True,
                prompt_lookup_num_tokens=extra.get("prompt_lookup_num_tokens"),
            )
            self.target.model.generate(
                ids, attention_mask=torch.ones_like(ids), generation_config=config,
                logits_processor=LogitsProcessorList([GumbelMaxChooser(params, len(prompt_ids), log)]),
                stopping_criteria=StoppingCriteriaList([_Flag(streamer.stopped)]),
                streamer=streamer, assistant_model=extra.get("assistant_model"),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            streamer.chunks.put(("error", exc))
            return
        streamer.chunks.put(("done", None))

    def _transcript(self, prompt_ids: list[int], output: list[int], records: list[TokenRecord], steps: list[Step],
                    params: SamplingParams, finish: str, strategy: str, *, seconds: float,
                    first_token_seconds: float) -> Transcript:
        text = self.target.decode(output)
        if params.stop and finish == "stop":
            text = cut_text(text, params.stop)
        return Transcript(
            model_name=self.target.name, model_digest=self.target.digest, tokenizer_digest=self.target.tokenizer_digest,
            prompt_ids=prompt_ids, output_ids=output, tokens=records, steps=steps, params=params,
            finish_reason=finish, drafter=strategy, drafter_trusted=True, engine=self.name, text=text,
            seconds=seconds, first_token_seconds=first_token_seconds, engine_version=self.capabilities.version,
            model_file_digest=model_file_digest(self.target), engine_rederivable=self.capabilities.rederivable,
        )


def build(target: LoadedModel, drafter: Drafter, options: dict[str, Any]) -> TransformersEngine:
    """The `register_engines` factory."""
    return TransformersEngine(target, drafter, top_logprobs=int(options.get("top_logprobs", 5)))
