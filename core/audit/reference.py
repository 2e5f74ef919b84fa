"""The audit's reference model and the runtime that scores it.

When the reference is a GGUF (a `.gguf` path or an alias of one, e.g. the default model), `audit
run` loads it with the llama.cpp runtime (`specguard.runtime.llamacpp`: the file as is, no fp32
torch copy) and scores answers with llama.cpp: teacher-forced on the engine's decode schedule
(`specguard.consensus.llamacpp_rederive.LlamaCppSameEngine.logits`, the same re-execution a
verifier node runs), greedy continuations and the text-only walk one llama.cpp step per token.
`--reference-runtime torch` loads the fp32 torch copy as before (needed for `--mmd-samples`,
`--seeded` and `--rut`, which generate with the speculative engine; `auto` picks torch for them).

The torch and llama.cpp scorers return the same `PositionScore` rows (`rescore.rescore`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SpecguardError
from ..models import LoadedModel, load_model, resolve
from ..transcript import SamplingParams
from . import AuditUsageError
from .rescore import PositionScore, Step, align_text, greedy_steps, rescore, torch_step

log = logging.getLogger("specguard.audit.reference")
REFERENCE_RUNTIMES = ("auto", "torch", "llamacpp")


def _llama_cpp_missing() -> str | None:
    from ..llamacpp_runtime import llama_cpp_module

    try:
        llama_cpp_module("audit reference")
    except SpecguardError as exc:
        return exc.message
    return None


def reference_runtime(reference: str, requested: str = "auto", needs_torch: bool = False) -> str:
    """The runtime that loads `reference`: `requested`, or for `auto` llama.cpp when the reference is
    a GGUF, llama-cpp-python is installed and no option needs torch weights (`needs_torch`)."""
    if requested not in REFERENCE_RUNTIMES:
        raise AuditUsageError("unknown reference runtime", field="reference_runtime", got=requested,
                              expected=list(REFERENCE_RUNTIMES))
    if requested != "auto":
        return requested
    if needs_torch or resolve(reference)[0] != "gguf":
        return "torch"
    missing = _llama_cpp_missing()
    if missing:
        log.warning("reference %s: llama.cpp unavailable (%s): loading the fp32 torch copy", reference, missing)
        return "torch"
    return "llamacpp"


def load_reference(reference: str, requested: str = "auto", needs_torch: bool = False) -> LoadedModel:
    """The audit's reference, loaded on `reference_runtime(...)` (its choice stated on stderr)."""
    runtime = reference_runtime(reference, requested, needs_torch)
    if runtime == "llamacpp":
        print(f"specguard: reference {reference}: scored by llama.cpp on the GGUF as is "
              "(--reference-runtime torch for the fp32 torch copy)", file=sys.stderr)
    return load_model(reference, runtime=runtime)


def load_audit_reference(cfg: Any) -> LoadedModel:
    """The reference of an `AuditConfig`: torch when its options generate with the speculative
    engine (`mmd_samples`, `seeded_prompts`, `rut_prompts`), else `cfg.reference_runtime`."""
    needs_torch = cfg.mmd_samples >= 2 or bool(cfg.seeded_prompts or cfg.rut_prompts)
    return load_reference(cfg.reference, getattr(cfg, "reference_runtime", "auto"), needs_torch)


def is_llamacpp(reference: LoadedModel) -> bool:
    """Whether `reference` has no torch weights and runs on llama.cpp."""
    return reference.model is None and getattr(reference, "gguf_path", None) is not None


@lru_cache(maxsize=8)
def _engine(gguf: str) -> Any:
    from ..consensus.llamacpp_rederive import LlamaCppSameEngine

    return LlamaCppSameEngine(Path(gguf))


def rescore_reference(reference: LoadedModel, items: list[tuple[list[int], list[int], list[list[int]] | None]],
                      params: SamplingParams | None = None, top_k: int = 5,
                      batch_size: int = 1) -> list[list[PositionScore]]:
    """`rescore.rescore` on the reference's own runtime (torch model, or llama.cpp on its GGUF)."""
    if not is_llamacpp(reference):
        return rescore(reference.model, items, params, top_k, batch_size)
    from ..consensus.llamacpp_rederive import log_softmax64, score_logits

    params = params or SamplingParams(max_tokens=1)
    engine = _engine(str(reference.gguf_path))
    results: list[list[PositionScore]] = []
    for prompt, output, alts in items:
        if not output:
            results.append([])
            continue
        logits = engine.logits(list(prompt), list(output))
        logp = log_softmax64(logits)
        scored = score_logits(logits, list(output), params, top_k).positions
        results.append([PositionScore(p.token_id, p.logprob, p.expected_id, p.margin, p.top,
                                      {int(a): float(logp[i, int(a)]) for a in (alts[i] if alts else [])})
                        for i, p in enumerate(scored)])
    return results


@contextmanager
def reference_step(reference: LoadedModel, length: int) -> Iterator[Step]:
    """A `Step` on the reference's runtime for up to `length` tokens (a pooled llama.cpp context:
    the engine's own settings, cleared before and after)."""
    if not is_llamacpp(reference):
        yield torch_step(reference.model)
        return
    from ..consensus.llamacpp_rederive import KV_F16
    from ..llamacpp_runtime import POOL

    engine = _engine(str(reference.gguf_path))
    n_ctx = engine.n_ctx if length <= engine.n_ctx else 1 << (length - 1).bit_length()
    extra = {"type_k": KV_F16, "type_v": KV_F16}
    with engine._lock:
        llama = POOL.acquire(str(reference.gguf_path), engine.threads, n_ctx, **extra)
        vocab = int(llama.n_vocab())

        def step(ids: list[int]) -> torch.Tensor:
            llama.eval([int(t) for t in ids])
            row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,))
            return torch.from_numpy(np.array(row, dtype=np.float32, copy=True))

        llama.n_tokens = 0
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        try:
            yield step
        finally:
            llama.n_tokens = 0
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            POOL.release(str(reference.gguf_path), engine.threads, n_ctx, llama, **extra)


def greedy_reference(reference: LoadedModel, prompt_ids: list[int], max_tokens: int, eos_ids: set[int] | None = None,
                     top_k: int = 5) -> tuple[list[int], list[float], list[dict[int, float]]]:
    """`rescore.greedy_generate` on the reference's runtime."""
    with reference_step(reference, len(prompt_ids) + max_tokens + 1) as step:
        return greedy_steps(step, prompt_ids, max_tokens, eos_ids, top_k)


def align_reference(reference: LoadedModel, prompt_ids: list[int], text: str, max_tokens: int,
                    top_k: int = 5) -> tuple[list[PositionScore], int]:
    """`rescore.align_text` on the reference's runtime."""
    with reference_step(reference, len(prompt_ids) + 4 * max_tokens + 9) as step:
        return align_text(reference, prompt_ids, text, max_tokens, top_k, step=step)


__all__ = ["REFERENCE_RUNTIMES", "align_reference", "greedy_reference", "is_llamacpp", "load_audit_reference", "load_reference",
           "reference_runtime", "reference_step", "rescore_reference"]
