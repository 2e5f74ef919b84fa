"""A safetensors model directory into the torch runtime at another dtype than it is stored in.

transformers memory-maps safetensors and casts tensor by tensor, so no fp32 *tensor* copy is
made when an fp32 directory is loaded at bf16; but every fp32 page it reads stays mapped, and so
resident, until the load ends: the peak is about the fp32 file plus the bf16 weights. Here each
tensor is read with plain file reads (the page cache is not the process's memory) into a
temporary, cast into a parameter allocated at the target dtype, and the temporary dropped: the
peak is the weights at the target dtype plus one tensor as stored.

`load_cast(folder, config, torch_dtype, device)` returns None where transformers' own loader is
the right one: weights stored at the requested dtype already (memory-mapped without a copy), not
safetensors, other dtypes than F32/BF16/F16, or tensor names that are not exactly the model's
parameters (checkpoints transformers renames on load). The result equals
`from_pretrained(folder, dtype=...)` tensor for tensor (tests/runtime/test_safetensors_torch.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_MAX_HEADER = 100 << 20


def _files(folder: Path) -> list[Path] | None:
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError("unreadable safetensors index", field="model", got=str(index)) from exc
    return [folder / name for name in sorted(set(weight_map.values()))]


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data, the header's tensor entries) of a safetensors file."""
    with path.open("rb") as f:
        raw = f.read(8)
        size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < size <= _MAX_HEADER:
            raise ModelError("not a safetensors file", field="model", got=str(path))
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise ModelError("unreadable safetensors header", field="model", got=str(path)) from exc
    if not isinstance(header, dict):
        raise ModelError("unreadable safetensors header", field="model", got=str(path))
    header.pop("__metadata__", None)
    return 8 + size, header


def _entries(files: list[Path]) -> list[tuple[Path, int, str, dict]]:
    """(file, data offset, name, header entry) of every tensor."""
    return [(path, start, name, entry) for path in files for start, header in [_header(path)]
            for name, entry in header.items()]


def _fits(plan: list[tuple[Path, int, str, dict]], params: dict[str, Any]) -> bool:
    """Every tensor is a parameter of the model by its exact name, in a dtype read here."""
    for _path, _start, name, entry in plan:
        if name not in params or entry.get("dtype") not in _DTYPES:
            return False
        if list(params[name].shape) != list(entry.get("shape", [])):
            raise ModelError("safetensors tensor shape does not fit the model", field=f"tensor {name!r}",
                             got=entry.get("shape"), expected=list(params[name].shape))
    return True


def _read(f: Any, start: int, name: str, entry: dict) -> Any:
    import torch

    begin, end = (int(x) for x in entry["data_offsets"])
    buffer = bytearray(end - begin)
    f.seek(start + begin)
    if f.readinto(buffer) != len(buffer):
        raise ModelError("truncated safetensors tensor", field=f"tensor {name!r}", got=str(f.name))
    dtype = getattr(torch, _DTYPES[entry["dtype"]])
    return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"]) if buffer else \
        torch.empty(entry["shape"], dtype=dtype)


def load_cast(folder: Path, config: Any, torch_dtype: Any, device: str = "cpu") -> Any:
    """The model of `folder` at `torch_dtype` on `device`, read tensor by tensor; None: use transformers."""
    import torch

    from .gguf_torch import _empty_model, _set_parameter

    files = _files(folder)
    if files is None:
        return None
    plan = _entries(files)
    target = str(torch_dtype).replace("torch.", "")
    if all(_DTYPES.get(entry.get("dtype")) == target for *_, entry in plan):
        return None  # stored at the requested dtype: transformers maps it without a copy
    model = _empty_model(config, torch_dtype)
    params = dict(model.named_parameters(remove_duplicate=False))
    if not _fits(plan, params):
        return None
    handles: dict[Path, Any] = {}
    try:
        with torch.no_grad():
            for path, start, name, entry in plan:
                f = handles.get(path) or handles.setdefault(path, path.open("rb"))
                value = torch.empty(params[name].shape, dtype=params[name].dtype, device=device)
                value.copy_(_read(f, start, name, entry))
                _set_parameter(model, name, value)
    finally:
        for f in handles.values():
            f.close()
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = sorted(n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta)
    if missing:
        return None  # parameters transformers would initialize or rename: its loader decides
    return model.to(device).eval()
