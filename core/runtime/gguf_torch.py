"""A GGUF into the torch runtime at the requested dtype, one tensor at a time (no fp32 model copy).

`load_gguf_weights(path, config, dtype, device)` builds the transformers model with its parameters
on the meta device (buffers such as RoPE's `inv_freq` are computed as usual), then for each GGUF
tensor, in file order: reads its bytes as stored (not memory-mapped, so the file's pages are not
counted in the process's resident memory), dequantizes them with the `gguf` package
(`gguf.quants.dequantize`, what transformers' own GGUF loader uses) in chunks of rows, applies
transformers' per-architecture tensor processing (for Llama the reverse of llama.cpp's q/k
permutation, as a gather of rows), casts to `dtype` and writes the rows into a parameter
allocated at `dtype` on `device`. Peak memory is about the weights at `dtype` plus one chunk's
fp32 temporary (at most `CHUNK_ELEMENTS` values), whatever the model's size.

The result equals `AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=...)`
tensor for tensor (tests/runtime/test_gguf_torch.py): the same dequantization, the same name
mapping (`get_gguf_hf_weights_map`'s walk, `gguf_to_hf_names`) and processor (`TENSOR_PROCESSORS`), the same cast. GGUF
tensors transformers does not map (e.g. `rope_freqs`) are skipped as it skips them; a model
parameter no tensor fills is a `ModelError`. Architectures whose processor merges several GGUF
tensors into one (mixture-of-experts), or that writes a parameter itself (GPT-2's output matrix), are
refused: they cannot be streamed tensor by tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .gguf_file import GGUFFile, GGUFTensor, read_gguf

log = logging.getLogger("specguard.runtime.gguf_torch")

#: values dequantized at a time (fp32: 64 MiB, a few times that inside the dequantization); bigger
#: tensors are read in chunks of rows
CHUNK_ELEMENTS = 1 << 24
#: architectures whose transformers processor writes parameters itself (mixture-of-experts tensors
#: merged from several GGUF tensors; GPT-2's output matrix) instead of returning one tensor per tensor
_UNSTREAMABLE = frozenset({"qwen2moe", "qwen3moe", "gpt_oss", "gpt-oss", "minimax-m2", "gpt2"})


def _processor(info: GGUFFile, config: Any) -> Any:
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    arch = info.architecture
    if arch in _UNSTREAMABLE:
        raise ModelError("the torch runtime cannot stream this GGUF architecture tensor by tensor", field="model",
                         got=arch, expected="an architecture transformers maps tensor by tensor (llama, qwen2, mistral, ...)")
    return TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())


def _row_order(processor: Any, name: str, rows: int) -> Any:
    """For a processor that only reorders rows (Llama's q/k reverse permutation): which GGUF row
    each model row takes (None for the identity); else the string "whole" (process the whole tensor)."""
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, TensorProcessor

    if type(processor) is TensorProcessor:
        return None
    if type(processor) is not LlamaTensorProcessor:
        return "whole"
    probe = np.arange(rows, dtype=np.int64).reshape(rows, 1)
    order = processor.process(weights=probe, name=name).weights.reshape(-1)
    return None if np.array_equal(order, probe.reshape(-1)) else order


def _whole_or_none(processor: Any) -> str | None:
    """For a tensor that is not a matrix: untouched by the identity or Llama processor, else processed whole."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, TensorProcessor

    return None if type(processor) in (TensorProcessor, LlamaTensorProcessor) else "whole"


def _numpy_shape(tensor: GGUFTensor) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(tensor.shape))


def _dequantized_rows(f: Any, tensor: GGUFTensor, start: int, stop: int) -> Any:
    """Rows [start, stop) of the tensor as fp32 (numpy, 2-D: rows x elements per row)."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    shape = _numpy_shape(tensor)
    rows = max(1, int(np.prod(shape[:-1], dtype=np.int64)))
    row_bytes = tensor.n_bytes // rows
    buffer = np.empty((stop - start, row_bytes), dtype=np.uint8)
    f.seek(tensor.offset + start * row_bytes)
    if f.readinto(memoryview(buffer).cast("B")) != buffer.nbytes:
        raise ModelError("truncated GGUF tensor data", field=f"tensor {tensor.name!r}", got=str(f.name))
    values = dequantize(buffer, GGMLQuantizationType(tensor.type_id))
    return values.reshape(stop - start, shape[-1])


def _check_shape(tensor: GGUFTensor, got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(int(d) for d in got) != expected:
        raise ModelError("GGUF tensor shape does not fit the model", field=f"tensor {tensor.name!r}",
                         got=list(got), expected=list(expected))


def _fill(target: Any, f: Any, tensor: GGUFTensor, processor: Any) -> None:
    """Write the tensor's processed values into `target` (already at its dtype and device)."""
    import numpy as np
    import torch

    shape = _numpy_shape(tensor)
    rows = max(1, int(np.prod(shape[:-1], dtype=np.int64)))
    order = _row_order(processor, tensor.name, shape[0]) if len(shape) == 2 else _whole_or_none(processor)
    if isinstance(order, str):
        values = _dequantized_rows(f, tensor, 0, rows).reshape(shape)
        processed = processor.process(weights=values, name=tensor.name).weights
        _check_shape(tensor, tuple(processed.shape), tuple(target.shape))
        target.copy_(torch.from_numpy(np.ascontiguousarray(processed)))
        return
    _check_shape(tensor, shape, tuple(target.shape))
    flat = target.view(rows, shape[-1])
    inverse = torch.from_numpy(np.argsort(order)) if order is not None else None
    step = max(1, CHUNK_ELEMENTS // max(1, shape[-1]))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chunk = torch.from_numpy(_dequantized_rows(f, tensor, start, stop)).to(target.device)
        if inverse is None:
            flat[start:stop].copy_(chunk)
        else:
            flat.index_copy_(0, inverse[start:stop].to(target.device), chunk.to(target.dtype))


#: transformers' model_type -> gguf-py's architecture name, where they differ (as transformers maps them)
_GGUF_ARCH_ALIASES = {
    "cohere": "command-r", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gemma3_text": "gemma3",
    "gemma4_text": "gemma4", "umt5": "t5", "minimax_m2": "minimax-m2", "gpt_oss": "gpt-oss",
}


def gguf_to_hf_names(model: Any, processor: Any) -> dict[str, str]:
    """GGUF tensor name -> model parameter name, as transformers' `get_gguf_hf_weights_map` maps them
    (the same walk over the model and its submodules; one name table instead of one per submodule)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    model_type = model.config.model_type
    model_type = _GGUF_ARCH_ALIASES.get(model_type, model_type)
    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == model_type), None)
    if arch is None:
        raise ModelError("gguf-py has no tensor names for this architecture", field="model", got=model_type)
    table = get_tensor_name_map(arch, model.config.num_hidden_layers)

    def walk(module: Any, qual: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for hf_name in module.state_dict(keep_vars=True):
            hf_name = processor.preprocess_name(hf_name)
            base, suffix = hf_name, ""
            if hf_name.endswith((".weight", ".bias")):
                base, suffix = hf_name.rsplit(".", 1)
                suffix = "." + suffix
            gguf_name = table.get_name(base)
            if gguf_name is not None:
                out[gguf_name + suffix] = qual + hf_name
        for child_name, child in module.named_children():
            for key, value in walk(child, f"{qual}{child_name}.").items():
                out.setdefault(key, value)
        return out

    return walk(model, "")


def _empty_model(config: Any, torch_dtype: Any) -> Any:
    """The model with its parameters on the meta device (no memory) and its buffers computed."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype)


def _set_parameter(model: Any, name: str, value: Any) -> None:
    import torch

    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)


def load_gguf_weights(path: Path, config: Any, torch_dtype: Any, device: str = "cpu",
                      on_tensor: Callable[[], Any] | None = None) -> Any:
    """A transformers causal LM of `config` holding the GGUF's weights at `torch_dtype` on `device`."""
    import torch

    info = read_gguf(path)
    processor = _processor(info, config)
    model = _empty_model(config, torch_dtype)
    names = gguf_to_hf_names(model, processor)
    params = dict(model.named_parameters(remove_duplicate=False))
    with path.open("rb") as f, torch.no_grad():
        for tensor in info.tensors:
            hf_name = names.get(tensor.name)
            if hf_name is None or hf_name not in params:
                continue  # transformers skips what it does not map (e.g. rope_freqs)
            value = torch.empty(params[hf_name].shape, dtype=params[hf_name].dtype, device=device)
            _fill(value, f, tensor, processor)
            _set_parameter(model, hf_name, value)
            if on_tensor is not None:
                on_tensor()
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = sorted(n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta)
    if missing:
        raise ModelError("the GGUF has no tensor for some model parameters", field="model",
                         got=missing[:8], expected="every parameter of the architecture")
    return model.to(device).eval()


# -- the torch runtime's handle on a GGUF ----------------------------------------------------------

#: a GGUF whose fp32 weights take at most this many bytes keeps an fp32 safetensors copy in the model
#: cache after its first fp32 load, so later fp32 loads memory-map it (the default model: 0.7 s
#: instead of dequantizing again); bigger models are streamed from the GGUF every time
CACHE_MAX_BYTES = 2 << 30
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def write_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    """Write tensors (CPU, contiguous) as a safetensors file, one tensor at a time (no copy of them all)."""
    import json

    import torch

    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[str(tensor.dtype).replace("torch.", "")],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for tensor in tensors.values():
            f.write(memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))


def _write_fp32_cache(model: Any, tokenizer_folder: Path, gguf: Path, target: Path) -> None:
    """The streamed fp32 model as a model directory (config, tokenizer files, safetensors), atomically."""
    import json
    import os
    import shutil

    from ..models import _CACHE_FORMAT

    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in tokenizer_folder.iterdir():
        if item.is_file() and item.name != "specguard.json":
            shutil.copyfile(item, tmp / item.name)
    state = {k: v for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: stored once, as before
    write_safetensors(state, tmp / "model.safetensors", {"format": "pt", "source": gguf.name})
    (tmp / "specguard.json").write_text(json.dumps({"format": _CACHE_FORMAT, "gguf": gguf.name}))
    legacy = target / "legacy-digest-v2"
    if legacy.is_file():
        shutil.copyfile(legacy, tmp / legacy.name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _valid_fp32_cache(folder: Path) -> bool:
    import json

    from ..models import _CACHE_FORMAT

    marker = folder / "specguard.json"
    try:
        ok = json.loads(marker.read_text()).get("format") == _CACHE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
    return ok and (folder / "model.safetensors").is_file()


def load_gguf_torch(path: Path, name: str, dtype: str = "fp32", device: str = "cpu") -> Any:
    """The torch runtime's `LoadedModel` of a GGUF at `dtype` on `device`, streamed tensor by tensor.

    An fp32 load uses the fp32 safetensors copy in the model cache when there is one (written by
    an earlier fp32 load of a GGUF under `CACHE_MAX_BYTES`, or by specguard before streaming)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from ..models import (
        _TORCH_DTYPES,
        LoadedModel,
        _file_sha256,
        _load_dir,
        _lock,
        _quiet_transformers,
        model_cache_dir,
    )
    from ..progress import phase
    from .digest import gguf_model_digest
    from .llamacpp import _tokenizer_dir

    _quiet_transformers()
    key = _file_sha256(path)
    cached = model_cache_dir() / key
    source = f"gguf:{path.name}#sha256:{key}"
    if dtype == "fp32" and _valid_fp32_cache(cached):
        loaded = _load_dir(cached, name, source, dtype, device)
    else:
        import torch

        folder = _tokenizer_dir(path)
        config = AutoConfig.from_pretrained(str(folder))
        info = read_gguf(path)
        with phase(f"Loading {path.name} at {dtype} on {device} (dequantizing tensor by tensor)",
                   total=len(info.tensors)) as progress:
            model = load_gguf_weights(path, config, getattr(torch, _TORCH_DTYPES[dtype]), device,
                                      on_tensor=progress.advance)
            model.generation_config = GenerationConfig.from_pretrained(str(folder))
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        loaded = LoadedModel(name=name, model=model, tokenizer=tokenizer, source=source, device=device)
        if dtype == "fp32" and device == "cpu" and _fp32_bytes(model) <= CACHE_MAX_BYTES:
            try:
                with _lock, phase(f"Caching {path.name} as fp32 safetensors for faster loads"):
                    _write_fp32_cache(model, folder, path, cached)
            except OSError as exc:  # a speed-up only: the model is loaded either way
                log.warning("could not cache %s as safetensors: %s", path.name, exc)
    loaded.gguf_path = path
    loaded._digest = gguf_model_digest(path)
    return loaded


def _fp32_bytes(model: Any) -> int:
    return sum(p.numel() for p in model.parameters()) * 4
