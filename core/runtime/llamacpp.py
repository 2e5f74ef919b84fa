"""The llama.cpp runtime: a GGUF as is, with no torch weights at all.

`load_llamacpp(path)` returns a `LlamaCppModel`, a `LoadedModel` whose `model` is None:

- identity: the v3 digest streamed from the file (specguard.runtime.digest), and the SHA-256
  of the file's bytes (`model_file_digest`, what receipts name as the engine's file);
- tokenizer, chat template, generation config (EOS ids) and context length: written once by
  transformers (in a child process) from the GGUF's *metadata* only (no tensor is read), exactly
  as the torch runtime writes them when it converts the same file, and served here by
  `specguard.runtime.tokenizer.FileTokenizer` (no transformers, no torch in this process), so
  prompt ids, decoded text and the tokenizer digest are the same in both runtimes (and as in
  receipts signed before runtimes existed). They are cached (a few MB, no weights) under
  `$SPECGUARD_HOME/models/<sha256>.tokenizer/`, or taken from the torch runtime's converted copy;
- computation: llama.cpp contexts from the shared pool (specguard.llamacpp_runtime), which
  memory-maps the GGUF: resident memory is about the file plus the KV cache.

`score(model, prompt_ids, output_ids, params, top_k)` is teacher-forced scoring with llama.cpp
(one batched evaluation, logits for every output position), returning the same `ScoreResult`
as the torch runtime's `specguard.engine.scoring.score`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import ModelError, RequestError
from ..models import LoadedModel, _file_sha256, model_cache_dir, recorded_legacy_digest
from .gguf_file import GGUFFile, read_gguf
from .tokenizer import FileTokenizer, write_tokenizer_dir_in_child

_TOKENIZER_FORMAT = "1"


@dataclass
class LlamaCppModel(LoadedModel):
    """A GGUF served by llama.cpp: tokenizer and configs from its metadata, no torch weights."""

    config: Any = field(default=None, repr=False)
    generation_config: Any = field(default=None, repr=False)
    info: GGUFFile | None = field(default=None, repr=False)
    file_digest: str = ""

    runtime = "llamacpp"

    @property
    def dtype(self) -> str:
        return _file_type(self.info)

    @property
    def runtime_label(self) -> str:
        return ""

    @property
    def vocab_size(self) -> int:
        return _vocab_size(self.info)

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048) or 2048)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.generation_config, "eos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return ids

    def accepts_digest(self, digest: str) -> bool:
        """Its v3 digest, or its v2 digest when the torch runtime recorded it on this machine (never
        dequantizes to find out: an unrecorded v2 digest is refused; `legacy_digest` computes it)."""
        if digest == self.digest:
            return True
        if self._legacy_digest is None and self.gguf_path is not None:
            self._legacy_digest = recorded_legacy_digest(self.gguf_path)
        return self._legacy_digest is not None and digest == self._legacy_digest

    def describe(self) -> dict[str, Any]:
        info = self.info
        assert info is not None
        return {
            "name": self.name,
            "source": self.source,
            "digest": self.digest,
            "tokenizer_digest": self.tokenizer_digest,
            "architecture": info.architecture,
            "layers": info.arch_value("block_count"),
            "hidden_size": info.arch_value("embedding_length"),
            "vocab_size": self.vocab_size,
            "parameters": sum(_elements(t.shape) for t in info.tensors),
            "dtype": self.dtype,
            "max_context": self.max_context,
            "runtime": self.runtime,
            "device": self.device,
            "file_digest": self.file_digest,
        }


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _file_type(info: GGUFFile | None) -> str:
    """The GGUF's dominant tensor type (e.g. "Q4_1"): the type of the most bytes."""
    if info is None or not info.tensors:
        return "unknown"
    totals: dict[str, int] = {}
    for t in info.tensors:
        totals[t.type_name] = totals.get(t.type_name, 0) + t.n_bytes
    return max(totals, key=lambda k: totals[k])


def _vocab_size(info: GGUFFile | None) -> int:
    """Rows of the output (or tied embedding) matrix, as the torch runtime's LM head has."""
    if info is None:
        return 0
    by_name = {t.name: t for t in info.tensors}
    head = by_name.get("output.weight") or by_name.get("token_embd.weight")
    if head is not None and len(head.shape) == 2:
        return int(head.shape[1])
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    return len(tokens) if isinstance(tokens, list) else 0


def _tokenizer_dir(path: Path) -> Path:
    """A directory with the GGUF's tokenizer, config and generation config (no weights), made once."""
    from ..models import _lock

    key = _file_sha256(path)
    converted = model_cache_dir() / key
    if (converted / "specguard.json").is_file() and (converted / "tokenizer.json").is_file():
        return converted  # the torch runtime's full conversion: the same tokenizer files
    target = model_cache_dir() / f"{key}.tokenizer"
    marker = target / "specguard.json"
    with _lock:
        if marker.is_file() and json.loads(marker.read_text()).get("format") == _TOKENIZER_FORMAT:
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_tokenizer_dir_in_child(path, tmp)
        except ModelError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / "specguard.json").write_text(json.dumps({"format": _TOKENIZER_FORMAT, "gguf": path.name}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
    return target


def _json_namespace(path: Path) -> SimpleNamespace:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}", field="model", got=str(exc)) from exc
    return SimpleNamespace(**data) if isinstance(data, dict) else SimpleNamespace()


def load_llamacpp(path: Path, name: str) -> LlamaCppModel:
    """The llama.cpp runtime's handle on a GGUF: identity streamed, tokenizer from metadata, no weights."""
    from ..llamacpp_runtime import file_sha256
    from .digest import gguf_model_digest

    info = read_gguf(path)
    folder = _tokenizer_dir(path)
    tokenizer = FileTokenizer(folder)
    config = _json_namespace(folder / "config.json")
    generation = _json_namespace(folder / "generation_config.json")
    file_digest = file_sha256(path)
    model = LlamaCppModel(
        name=name, model=None, tokenizer=tokenizer, source=f"gguf:{path.name}#{file_digest}", gguf_path=path,
        config=config, generation_config=generation, info=info, file_digest=file_digest,
    )
    model._digest = gguf_model_digest(path, info)
    return model


def score(model: LoadedModel, prompt_ids: list[int], output_ids: list[int], params: Any = None, top_k: int = 5,
          *, threads: int = 1) -> Any:
    """Teacher-forced scoring of `output_ids` after `prompt_ids` by llama.cpp on the model's GGUF."""
    import numpy as np
    import torch

    from ..engine.sampling import choose, decision_scores
    from ..engine.scoring import ScoredPosition, ScoreResult
    from ..llamacpp_runtime import POOL
    from ..transcript import SamplingParams

    if not prompt_ids:
        raise RequestError("cannot score without a prompt", field="prompt_ids")
    if not output_ids:
        return ScoreResult([])
    path = model.gguf_path
    if path is None:
        raise RequestError("llama.cpp scoring needs a GGUF model", field="model", got=model.name)
    ids = [int(t) for t in (*prompt_ids, *output_ids)]
    vocab = model.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError("token id outside the vocabulary", field="output_ids", got=bad, expected=f"0..{vocab - 1}")
    params = params or SamplingParams(max_tokens=max(1, len(output_ids)))
    n_ctx = max(16, len(ids) + 1)
    llama = POOL.acquire(str(path), threads, n_ctx, logits_all=True)
    try:
        llama.reset()
        llama.eval(ids)
        rows = np.array(llama.scores[len(prompt_ids) - 1 : len(ids) - 1, :vocab], dtype=np.float32)
    finally:
        POOL.release(str(path), threads, n_ctx, llama, logits_all=True)
    logits = torch.from_numpy(rows)
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, top_k, dim=-1) if top_k else None
    scores = decision_scores(logits, params, list(range(len(output_ids))))
    chosen, margins = choose(scores)
    out = []
    for i, tok in enumerate(int(t) for t in output_ids):
        out.append(ScoredPosition(
            position=i, token_id=tok, logprob=float(logp[i, tok]),
            top=list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)) if top is not None else [],
            expected_id=chosen[i], margin=margins[i], given_score_gap=float(scores[i, chosen[i]] - scores[i, tok]),
        ))
    return ScoreResult(out)
