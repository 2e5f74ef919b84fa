"""Same-engine re-checking of llama.cpp transcripts: re-execute llama.cpp on the same GGUF.

A `llamacpp` transcript names the SHA-256 of the GGUF the node ran (`Transcript.model_file_digest`,
signed in the receipt's `engine` object). A verifier that holds that very file re-executes
llama.cpp over prompt + claimed output on the engine's own schedule (`replay_logits`: the prompt
in chunks of `n_batch`, then one claimed token per step, as `specguard.engine.llamacpp` decodes)
and judges the claimed tokens and log-probabilities within llama.cpp's own run-to-run noise
(other thread counts, context sizes), measured by bench/same_engine.py and committed in
same_engine_calibration.json (docs/engines.md).

Why not one teacher-forced prefill pass: on the portable CPU build, llama.cpp's batched kernels
for the Q4_1 GGUF differ from its one-token decode kernels by up to about a logit at some
positions (bench/same_engine.py measures it: `teacher_forced_logits`), as much as the distance to
fp32 torch; a tolerance that covered it would leave a dishonest node as much freedom as the
cross-engine margin. Replaying the decode schedule costs one llama.cpp step per output token
(without sampling) and reproduces the engine's logits (measured: bit-identical here).

`LlamaCppSameEngine.unavailable_reason(file_digest)` says why this verifier cannot re-execute a
transcript (llama-cpp-python missing, no GGUF, another file digest); it then refuses to vote
(unless the operator configured a cross-engine table, and then the vote says cross-engine).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.sampling import choose, decision_scores
from ..engine.scoring import ScoredPosition, ScoreResult
from ..errors import RequestError, SpecguardError
from ..transcript import SamplingParams

ENGINE = "llamacpp"
CALIBRATION_FILE = Path(__file__).with_name("same_engine_calibration.json")


def _calibrated() -> dict[str, float]:
    """The committed same-engine tolerance (bench/same_engine.py); conservative fallbacks without it."""
    try:
        data = json.loads(CALIBRATION_FILE.read_text("utf-8"))
        rec = data["recommended"]
        return {"margin": float(rec["margin"]), "logprob_tolerance": float(rec["logprob_tolerance"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"margin": 1e-2, "logprob_tolerance": 1e-2}


_DEFAULTS = _calibrated()
#: Near-tie margin (logits; / temperature for sampled requests) of a same-engine llama.cpp re-check.
SAME_ENGINE_MARGIN: float = _DEFAULTS["margin"]
#: Tolerance on claimed log-probabilities of a same-engine llama.cpp re-check.
SAME_ENGINE_LOGPROB_TOLERANCE: float = _DEFAULTS["logprob_tolerance"]
#: The engine's KV cache type (llama.cpp's default, f16): GGML type id for `type_k`/`type_v`.
KV_F16 = 1


def teacher_forced_logits(llama: Any, prompt_ids: list[int], output_ids: list[int],
                          n_batch: int | None = None) -> np.ndarray:
    """llama.cpp's logits for every output position, prompt + output evaluated from position 0 in
    batches of `n_batch` tokens (default the context's): row i is the distribution that chose
    output_ids[i]. The context's KV cache is cleared before and its token count reset after."""
    ids = [int(t) for t in list(prompt_ids) + list(output_ids)[:-1]]
    first = len(prompt_ids) - 1
    vocab = int(llama.n_vocab())
    step = min(int(n_batch or llama.n_batch), int(llama.n_batch))
    rows: list[np.ndarray] = []
    llama.n_tokens = 0
    llama._ctx.kv_cache_seq_rm(-1, 0, -1)
    try:
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            wanted = start + len(chunk) > first
            llama._batch.set_batch(batch=chunk, n_past=start, logits_all=wanted)
            llama._ctx.decode(llama._batch)
            for j in range(max(0, first - start), len(chunk)) if wanted else ():
                row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(j), shape=(vocab,))
                rows.append(np.array(row, dtype=np.float32, copy=True))
    finally:
        llama.n_tokens = 0
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
    return np.stack(rows) if rows else np.zeros((0, vocab), dtype=np.float32)


def replay_logits(llama: Any, prompt_ids: list[int], output_ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every output position on the `llamacpp` engine's schedule: the prompt
    evaluated from position 0 in chunks of the context's `n_batch`, then each claimed output token
    in its own step. Row i is the distribution the engine chose output_ids[i] from."""
    vocab = int(llama.n_vocab())
    rows: list[np.ndarray] = []
    llama.n_tokens = 0
    try:
        pending = [int(t) for t in prompt_ids]
        for token in output_ids:
            llama.eval(pending)
            rows.append(np.array(np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,)),
                                 dtype=np.float32, copy=True))
            pending = [int(token)]
    finally:
        llama.n_tokens = 0
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
    return np.stack(rows) if rows else np.zeros((0, vocab), dtype=np.float32)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise temperature-1 log-probabilities in float64 (as the llamacpp engine records them)."""
    row = np.asarray(logits, dtype=np.float64)
    shifted = row - row.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def score_logits(logits: np.ndarray, output_ids: list[int], params: SamplingParams, top_k: int) -> ScoreResult:
    """`engine.scoring.score`'s result from given logits rows (one per output position)."""
    n = len(output_ids)
    if n == 0:
        return ScoreResult([])
    logp = log_softmax64(logits)
    scores = decision_scores(torch.from_numpy(np.array(logits, dtype=np.float32, copy=True)), params, list(range(n)))
    chosen, margins = choose(scores)
    k = min(top_k, logp.shape[-1])
    out = []
    for i, tok in enumerate(output_ids):
        tok = int(tok)
        top: list[tuple[int, float]] = []
        if k:
            best = np.argpartition(-logp[i], k - 1)[:k]
            top = sorted(((int(j), float(logp[i, j])) for j in best), key=lambda item: (-item[1], item[0]))
        out.append(ScoredPosition(position=i, token_id=tok, logprob=float(logp[i, tok]), top=top,
                                  expected_id=chosen[i], margin=margins[i],
                                  given_score_gap=float(scores[i, chosen[i]] - scores[i, tok])))
    return ScoreResult(out)


@dataclass
class LlamaCppSameEngine:
    """A verifier's own llama.cpp on a GGUF: re-executes `llamacpp` transcripts of that very file."""

    gguf: Path
    margin: float = SAME_ENGINE_MARGIN
    logprob_tolerance: float = SAME_ENGINE_LOGPROB_TOLERANCE
    threads: int = 1
    n_ctx: int = 8192
    engine: str = ENGINE
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def digest(self) -> str:
        """`sha256:` of the GGUF (cached per path, size and mtime)."""
        from ..llamacpp_runtime import file_sha256

        return file_sha256(self.gguf)

    def unavailable_reason(self, file_digest: Any) -> str | None:
        """Why this verifier cannot re-execute a transcript of the file `file_digest` (None: it can)."""
        from ..llamacpp_runtime import llama_cpp_module

        if not Path(self.gguf).is_file():
            return f"the verifier's GGUF {self.gguf} is missing"
        try:
            llama_cpp_module("engine")
        except SpecguardError as exc:
            return f"llama-cpp-python is not installed on the verifier ({exc.message[:80]})"
        mine = self.digest()
        if file_digest != mine:
            return (f"the transcript's model file digest {file_digest!r} is not the verifier's GGUF {mine}: "
                    "it cannot re-execute the same engine on the same file")
        return None

    def score(self, prompt_ids: list[int], output_ids: list[int], params: SamplingParams, top_k: int) -> ScoreResult:
        """llama.cpp's scoring of `output_ids` after `prompt_ids` on the engine's schedule (one context at a time)."""
        return score_logits(self.logits(prompt_ids, output_ids), output_ids, params, top_k)

    def logits(self, prompt_ids: list[int], output_ids: list[int]) -> np.ndarray:
        """`replay_logits` on a pooled context of this GGUF (ids checked against its vocabulary)."""
        from ..llamacpp_runtime import POOL

        total = len(prompt_ids) + len(output_ids)
        if not prompt_ids:
            raise RequestError("cannot score without a prompt", field="prompt_ids")
        n_ctx = self.n_ctx if total <= self.n_ctx else 1 << math.ceil(math.log2(total))
        extra = {"type_k": KV_F16, "type_v": KV_F16}
        with self._lock:
            llama = POOL.acquire(str(self.gguf), self.threads, n_ctx, **extra)
            try:
                vocab = int(llama.n_vocab())
                bad = next((t for t in [*prompt_ids, *output_ids] if not 0 <= int(t) < vocab), None)
                if bad is not None:
                    raise RequestError("token id outside the GGUF's vocabulary", field="output_ids", got=bad,
                                       expected=f"0..{vocab - 1}")
                return replay_logits(llama, prompt_ids, output_ids)
            finally:
                POOL.release(str(self.gguf), self.threads, n_ctx, llama, **extra)


__all__ = ["LlamaCppSameEngine", "replay_logits", "teacher_forced_logits", "score_logits", "log_softmax64", "SAME_ENGINE_MARGIN",
           "SAME_ENGINE_LOGPROB_TOLERANCE"]
