"""Weight transforms that stand in for what a cheating provider might serve.

Spec strings: `q8` (8-bit, blocks of 32, absmax scale per block, like GGUF Q8_0), `int8`
(8-bit, one absmax scale per output row), `q4` / `q3` (4- / 3-bit blocks of 32, like Q4_0),
`prune:N` (drop N decoder layers, evenly spaced from the middle), `noise:S` (add Gaussian noise
with std S x each tensor's std), `mix:SUB:FRAC` (serve SUB for a FRAC share of requests,
chosen by a hash of the request). Transforms touch every 2-D weight (linear layers, embeddings,
LM head) of a deep copy; the reference is never modified.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch

from ..models import LoadedModel
from . import AuditUsageError

BASIC = ("q8", "int8", "q4", "q3")


@dataclass(frozen=True)
class Substitute:
    """A parsed substitute spec; `mix_fraction` > 0 means only that share of requests is substituted."""

    spec: str
    kind: str
    value: float = 0.0
    inner: Substitute | None = None
    mix_fraction: float = 0.0


def parse_substitute(spec: str) -> Substitute:
    """Parse a substitute spec (see module docstring); raises AuditUsageError."""
    parts = spec.strip().split(":")
    kind = parts[0]
    try:
        if kind in BASIC and len(parts) == 1:
            return Substitute(spec, kind)
        if kind == "prune" and len(parts) == 2 and int(parts[1]) >= 1:
            return Substitute(spec, kind, float(int(parts[1])))
        if kind == "noise" and len(parts) == 2 and float(parts[1]) > 0:
            return Substitute(spec, kind, float(parts[1]))
        if kind == "mix" and len(parts) >= 3 and 0 < float(parts[-1]) <= 1:
            inner = parse_substitute(":".join(parts[1:-1]))
            if inner.kind == "mix":
                raise ValueError("nested mix")
            return Substitute(spec, kind, inner=inner, mix_fraction=float(parts[-1]))
    except ValueError:
        pass
    raise AuditUsageError("bad substitute spec", field="substitute", got=spec,
                          expected="q8|int8|q4|q3|prune:N|noise:S|mix:SUB:FRAC")


def _block_quant(w: torch.Tensor, bits: int, block: int = 32) -> torch.Tensor:
    flat = w.reshape(-1)
    pad = (-flat.numel()) % block
    x = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block)
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=1, keepdim=True) / qmax
    scale[scale == 0] = 1.0
    q = torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale
    return q.reshape(-1)[: flat.numel()].reshape(w.shape)


def _row_int8(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    scale[scale == 0] = 1.0
    return torch.clamp(torch.round(w / scale), -128, 127) * scale


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise AuditUsageError("prune needs a decoder with model.layers", field="substitute", got=type(model).__name__)
    return layers


def _prune(model: torch.nn.Module, n: int) -> None:
    layers = _layers(model)
    total = len(layers)
    if n >= total:
        raise AuditUsageError("cannot drop that many layers", field="substitute", got=n, expected=f"< {total}")
    mid = total // 2
    drop = sorted({min(total - 2, max(1, mid - n // 2 + i)) for i in range(n)}) if total > 2 else [total - 1]
    i = 0
    while len(drop) < n:  # tiny models: fill from the top
        if total - 1 - i not in drop:
            drop.append(total - 1 - i)
        i += 1
    keep = [layer for j, layer in enumerate(layers) if j not in set(drop)]
    for j, layer in enumerate(keep):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
    model.model.layers = torch.nn.ModuleList(keep)
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [t for j, t in enumerate(cfg.layer_types) if j not in set(drop)]


@torch.no_grad()
def apply_substitute(reference: LoadedModel, sub: Substitute, seed: int = 0) -> LoadedModel:
    """A transformed deep copy of the reference (for mix specs: the inner substitute's copy)."""
    if sub.kind == "mix" and sub.inner is not None:
        return apply_substitute(reference, sub.inner, seed)
    model = copy.deepcopy(reference.model)
    if sub.kind == "prune":
        _prune(model, int(sub.value))
    else:
        gen = torch.Generator().manual_seed(seed)
        seen: set[int] = set()
        for param in model.parameters():
            if param.dim() != 2 or id(param) in seen:
                continue
            seen.add(id(param))
            w = param.data.float()
            if sub.kind == "q8":
                new = _block_quant(w, 8)
            elif sub.kind == "int8":
                new = _row_int8(w)
            elif sub.kind == "q4":
                new = _block_quant(w, 4)
            elif sub.kind == "q3":
                new = _block_quant(w, 3)
            else:  # noise
                new = w + torch.randn(w.shape, generator=gen) * (float(w.std()) * sub.value)
            param.data.copy_(new.to(param.dtype))
    model.eval()
    return LoadedModel(name=f"{reference.name}+{sub.spec}", model=model, tokenizer=reference.tokenizer,
                       source=f"{reference.source}+substitute:{sub.spec}")


def mixed_in(sub: Substitute, request_key: str) -> bool:
    """Whether a mix substitute serves this request from the substitute (deterministic per request)."""
    if sub.kind != "mix":
        return True
    h = int.from_bytes(hashlib.sha256(request_key.encode()).digest()[:8], "big") / 2**64
    return h < sub.mix_fraction
