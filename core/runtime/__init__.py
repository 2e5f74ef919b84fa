"""Runtimes: what runs a model's numbers, in its native format and dtype.

One protocol (`ModelRuntime`), two implementations:

- `torch` (specguard.models.LoadedModel): a transformers model at `--dtype fp32|bf16|fp16` on
  `--device cpu|cuda`; safetensors are memory-mapped and cast per tensor, a GGUF is dequantized
  tensor by tensor into parameters at the dtype (specguard.runtime.gguf_torch; no fp32 copy of a
  bf16 model); fp32 on cpu is the reference and computes exactly as before runtimes existed;
- `llamacpp` (specguard.runtime.llamacpp.LlamaCppModel): a GGUF as is; no torch weights.

Both give the same tokenizer, chat template and EOS ids for the same GGUF (built from its
metadata) and name the model by the same digest (v3 for a GGUF, specguard.runtime.digest).

- `load(ref, runtime, dtype, device)`: `specguard.models.load_model`;
- `generate(model, prompt_ids, params)`: the runtime's own plain decoding (the built-in engine
  with no drafter for torch, the llamacpp engine for llama.cpp), a `Transcript`;
- `score(model, prompt_ids, output_ids, params, top_k)`: teacher-forced logprobs, top-k and the
  runtime's own choice per position (`specguard.engine.scoring.ScoreResult`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..models import DEVICES, DTYPES, RUNTIMES, LoadedModel, check_runtime, load_model
from ..transcript import SamplingParams, Transcript

__all__ = ["DEVICES", "DTYPES", "RUNTIMES", "ModelRuntime", "check_runtime", "generate", "load", "score"]


@runtime_checkable
class ModelRuntime(Protocol):
    """A loaded model as the engine, drafters, verifiers and audits see it (structural)."""

    name: str
    runtime: str  # "torch" | "llamacpp"
    tokenizer: Any
    device: str

    @property
    def dtype(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def tokenizer_digest(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_context(self) -> int: ...
    @property
    def eos_token_ids(self) -> set[int]: ...
    def accepts_digest(self, digest: str) -> bool: ...
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def describe(self) -> dict[str, Any]: ...


def load(ref: str | None = None, runtime: str = "torch", dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """Load `ref` on a runtime (see `specguard.models.load_model`)."""
    return load_model(ref, runtime=runtime, dtype=dtype, device=device)


def generate(model: LoadedModel, prompt_ids: list[int], params: SamplingParams) -> Transcript:
    """The runtime's own plain decoding of `prompt_ids` (no drafter)."""
    from ..drafters.base import NoDrafter
    from ..engine.factory import make_engine

    engine = "llamacpp" if model.runtime == "llamacpp" else "specguard"
    return make_engine(model, NoDrafter(), engine).generate(prompt_ids, params)


def score(model: LoadedModel, prompt_ids: list[int], output_ids: list[int], params: SamplingParams | None = None,
          top_k: int = 5) -> Any:
    """Teacher-forced scoring on the model's own runtime (a `ScoreResult`)."""
    if model.runtime == "llamacpp":
        from .llamacpp import score as llamacpp_score

        return llamacpp_score(model, prompt_ids, output_ids, params, top_k)
    from ..engine.scoring import score as torch_score

    return torch_score(model, prompt_ids, output_ids, params, top_k)
