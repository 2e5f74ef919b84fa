"""The `llamacpp` engine: llama.cpp (llama-cpp-python) running a GGUF as the TARGET.

Where the `llamacpp` drafter (specguard.drafters.llamacpp) lets llama.cpp propose tokens that the
fp32 torch target checks, this engine makes llama.cpp's own choices the output: it is the fast
path for operators who accept llama.cpp's numerics (4-bit weights, its kernels) and want receipts.

Per request it borrows a llama.cpp context from the shared pool (specguard.llamacpp_runtime),
evaluates the prompt from position 0 in chunks of `n_batch` (the cache is reset every request,
so the same request is always computed with the same schedule: same-engine re-checks are exact),
then decodes one token per step:

- greedy: the argmax of llama.cpp's logits (lowest id on exact ties), i.e. llama.cpp's own
  greedy decoding;
- sampled (`gumbel` mode): specguard's Gumbel-max rule (specguard.engine.sampling: temperature,
  top-k, top-p, and the noise for the request's seed and output position) on llama.cpp's logits,
  so a seed gives the same noise schedule as in the built-in engine. `GumbelLogitsProcessor` is the
  same rule as a llama.cpp logits processor (for `Llama.generate`/`create_completion`);
- logprobs: temperature-1 log-probabilities of llama.cpp's logits for each emitted position, with
  up to 20 alternatives;
- stops: EOS ids (the target's), stop strings (the shortest prefix, specguard.engine.stops),
  max tokens, `should_stop` before each step; one `StepEvent` per step.

The engine ignores the drafter it is built with (`uses_drafter=False`): verifying a draft in one
llama.cpp batch uses other kernels than decoding one token, so near-tie tokens could flip and the
output would depend on the draft (see docs/engines.md). It is not re-derivable by teacher-forced
torch scoring (`rederivable=False`): Q4 weights and other kernels; its transcripts say so
(`Transcript.engine_rederivable`) and record the engine version and the GGUF's SHA-256.

The target is usually a llama.cpp-runtime model (specguard.runtime.llamacpp: no torch weights;
what `serve --engine llamacpp` loads); a torch-loaded target of the same GGUF gives the same tokens.

Options (`make_engine(target, drafter, "llamacpp", options)`; `specguard serve --engine llamacpp
--threads N --max-model-len N`): `gguf` (default: the GGUF the target was loaded from), `threads`
(default: half the CPUs, as llama-cpp-python), `n_ctx` (default: the target's context, at most 8192;
`--max-model-len`), `kv_type`
("f16" default as llama.cpp, or "f32"), `top_logprobs` (default number of alternatives, 5).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..drafters.base import Drafter
from ..errors import RequestError, UsageError
from ..llamacpp_runtime import (
    POOL,
    LlamaPool,
    checked_gguf,
    file_sha256,
    int_option,
    llama_cpp_module,
    target_gguf,
)
from ..models import LoadedModel
from ..transcript import SamplingParams, Step, TokenRecord, Transcript
from .inputs import MAX_TOP_LOGPROBS, check_prompt, check_top_logprobs, with_seed
from .interface import EngineCapabilities, EngineStream, StepCallback, StepEvent, StopCheck, drain
from .stops import cut_at_stop_token, cut_text, trim_at_stop_string

__all__ = ["GumbelLogitsProcessor", "LlamaCppEngine", "build", "decide", "token_record"]

DEFAULT_MAX_CTX = 8192
#: llama.cpp's GGML type ids for the KV cache (`type_k`/`type_v` of `llama_cpp.Llama`)
KV_TYPES = {"f16": 1, "f32": 0}


def decide(logits: np.ndarray, params: SamplingParams, position: int) -> tuple[int, float]:
    """specguard's choice at output `position` from one row of llama.cpp logits, and its margin.

    Greedy: the argmax (lowest id on exact ties) and the best-minus-second logit. Sampled: the
    Gumbel-max argmax for (seed, position) — `acceptance.verify_step`'s rule, computed by
    `sampling.decision_scores`. Greedy stays in numpy: the same choice as the torch rule (float32
    to float64 is exact) without torch's thread pool, which is slow on a busy machine.
    """
    if params.greedy:
        row = np.asarray(logits, dtype=np.float64)
        token = int(np.argmax(row))
        rest = np.delete(row, token)
        margin = float(row[token] - rest.max()) if rest.size else math.inf
        return token, margin if math.isfinite(margin) else math.inf
    import torch  # only sampled requests need it: a greedy llama.cpp server never imports torch

    from .sampling import choose, decision_scores

    scores = decision_scores(torch.from_numpy(np.array(logits, dtype=np.float32, copy=True))[None], params, [position])
    ids, margins = choose(scores)
    return int(ids[0]), float(margins[0])


def token_record(logits: np.ndarray, token: int, margin: float, position: int, top_n: int) -> TokenRecord:
    """The record of one emitted token: temperature-1 logprobs of llama.cpp's logits (float64), top `top_n`."""
    row = np.asarray(logits, dtype=np.float64)
    shifted = row - row.max()
    logp = shifted - math.log(float(np.exp(shifted).sum()))
    top: list[tuple[int, float]] = []
    if top_n:
        best = np.argpartition(-logp, min(top_n, logp.size) - 1)[:top_n]
        top = sorted(((int(i), float(logp[i])) for i in best), key=lambda item: (-item[1], item[0]))
    return TokenRecord(position=position, token_id=token, logprob=float(logp[token]), top=top, margin=margin)


class GumbelLogitsProcessor:
    """specguard's sampling rule as a llama.cpp logits processor.

    Every score but specguard's choice becomes -inf, so llama.cpp's own greedy sampler
    (`temperature=0`) emits exactly the token specguard's rule picks for the request's seed.
    `prompt_len` is the prompt's length: the output position is `len(input_ids) - prompt_len`.
    """

    def __init__(self, params: SamplingParams, prompt_len: int) -> None:
        if not params.greedy and params.seed is None:
            raise ValueError("sampled decoding needs a seed")
        self.params = params
        self.prompt_len = prompt_len

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        token, _ = decide(scores, self.params, len(input_ids) - self.prompt_len)
        out = np.full_like(scores, -np.inf)
        out[token] = 0.0
        return out


class LlamaCppEngine:
    """llama.cpp as the target (implements `Engine`); not re-derivable by torch scoring."""

    name = "llamacpp"

    def __init__(
        self,
        target: LoadedModel,
        gguf: str | Path,
        *,
        threads: int = 1,
        n_ctx: int = 4096,
        kv_type: str = "f16",
        top_logprobs: int = 5,
        pool: LlamaPool | None = None,
    ) -> None:
        llama_cpp = llama_cpp_module("engine")
        if kv_type not in KV_TYPES:
            raise UsageError("unknown KV cache type", field="kv_type", got=kv_type, expected=sorted(KV_TYPES))
        self.target = target
        self.gguf = str(gguf)
        self.threads = threads
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.top_logprobs = check_top_logprobs(top_logprobs)
        self._pool = pool or POOL
        self.capabilities = EngineCapabilities(
            rederivable=False,
            uses_drafter=False,
            logprobs=True,
            max_top_logprobs=MAX_TOP_LOGPROBS,
            sampling_modes=("gumbel",),
            version=f"llama-cpp-python {llama_cpp.__version__}",
        )
        self.model_file_digest = file_sha256(self.gguf)

    # -- the llama.cpp context --------------------------------------------------------------

    def _extra(self) -> dict[str, Any]:
        kv = KV_TYPES[self.kv_type]
        return {"type_k": kv, "type_v": kv}

    def acquire(self) -> Any:
        """A llama.cpp context for this engine's settings (borrowed from the pool; give it back)."""
        return self._pool.acquire(self.gguf, self.threads, self.n_ctx, **self._extra())

    def release(self, llama: Any) -> None:
        self._pool.release(self.gguf, self.threads, self.n_ctx, llama, **self._extra())

    # -- Engine protocol --------------------------------------------------------------------

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
        return drain(self.stream(prompt_ids, params, on_step=on_step, should_stop=should_stop,
                                 top_logprobs=top_logprobs))

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        top_logprobs: int | None = None,
    ) -> EngineStream:
        """Yield a StepEvent per decoded token; return the Transcript."""
        top_n = check_top_logprobs(self.top_logprobs if top_logprobs is None else top_logprobs)
        prompt_ids = check_prompt(prompt_ids, self.target)
        if params.mode not in self.capabilities.sampling_modes:
            raise RequestError("the llamacpp engine decodes in gumbel mode only", field="mode", got=params.mode,
                               expected=list(self.capabilities.sampling_modes))
        if len(prompt_ids) >= self.n_ctx:
            raise RequestError("prompt is longer than the llama.cpp context", field="prompt", got=len(prompt_ids),
                               expected=f"< {self.n_ctx} (engine option n_ctx)")
        params = with_seed(params)
        return self._run(prompt_ids, params, top_n, on_step, should_stop)

    def _run(
        self, prompt_ids: list[int], params: SamplingParams, top_n: int,
        on_step: StepCallback | None, should_stop: StopCheck | None,
    ) -> EngineStream:
        output: list[int] = []
        records: list[TokenRecord] = []
        steps: list[Step] = []
        eos = params.stop_token_ids(self.target.eos_token_ids)
        budget = min(params.max_tokens, self.target.max_context - len(prompt_ids), self.n_ctx - len(prompt_ids))
        finish = "length"
        start = time.perf_counter()
        first_token_at = 0.0
        llama = self.acquire()
        try:
            vocab = int(llama.n_vocab())
            llama.n_tokens = 0  # evaluate from position 0: the same schedule for the same request
            pending = list(prompt_ids)
            while len(output) < budget:
                if should_stop is not None and should_stop():
                    finish = "cancelled"
                    break
                t0 = time.perf_counter()
                llama.eval(pending)
                logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,))
                token, margin = decide(logits, params, len(output))
                emitted, hit_stop = cut_at_stop_token([token], eos)
                if hit_stop:
                    finish = "stop"
                new_records = [token_record(logits, token, margin, len(output), top_n)]
                output.extend(emitted)
                records.extend(new_records)
                t1 = time.perf_counter()
                if not first_token_at:
                    first_token_at = t1 - start
                step = Step(index=len(steps), drafter="none", drafted=[], accepted=0, emitted=list(emitted),
                            verify_seconds=t1 - t0)
                steps.append(step)
                if on_step is not None:
                    on_step(step)
                new_records, hit = trim_at_stop_string(self.target.decode, output, records, new_records, params.stop)
                if hit:
                    finish = "stop"
                yield StepEvent(step=step, tokens=new_records)
                if finish == "stop":
                    break
                pending = [token]
        finally:
            self.release(llama)
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
            drafter="none",
            drafter_trusted=True,
            engine=self.name,
            engine_version=self.capabilities.version,
            model_file_digest=self.model_file_digest,
            engine_rederivable=self.capabilities.rederivable,
            text=text,
            seconds=time.perf_counter() - start,
            first_token_seconds=first_token_at,
        )


def default_threads() -> int:
    """llama-cpp-python's default: half the CPUs, at least one."""
    return max(1, (os.cpu_count() or 2) // 2)


def build(target: LoadedModel, drafter: Drafter, options: dict[str, Any]) -> LlamaCppEngine:
    """The `llamacpp` engine factory: check the package, the GGUF and its vocabulary now."""
    llama_cpp_module("engine")
    ref = options.get("gguf")
    path = checked_gguf(Path(str(ref)).expanduser() if ref is not None else target_gguf(target), target,
                        "llamacpp engine", "give --model FILE.gguf (or the engine option gguf = PATH)")
    engine = LlamaCppEngine(
        target, path,
        threads=int_option(options, "threads", default_threads(), 1, 1024),
        n_ctx=int_option(options, "n_ctx", min(target.max_context, DEFAULT_MAX_CTX), 16, 1 << 20),
        kv_type=str(options.get("kv_type", "f16")),
        top_logprobs=int_option(options, "top_logprobs", 5, 0, MAX_TOP_LOGPROBS),
    )
    llama = engine.acquire()  # loads the file once (then pooled); a wrong vocabulary fails here, not per request
    try:
        n_vocab = int(llama.n_vocab())
    finally:
        engine.release(llama)
    if n_vocab != target.vocab_size:
        raise UsageError("the GGUF's vocabulary differs from the model's", field="gguf", got=n_vocab,
                         expected=target.vocab_size)
    return engine

