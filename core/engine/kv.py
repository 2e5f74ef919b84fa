"""KV-cache helpers that work across transformers versions (the cache argument was renamed
from `past_key_values` to `cache`, and `crop` now takes a negative count)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


@functools.lru_cache(maxsize=32)
def _cache_kwarg(model_type: type) -> str:
    params = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model: Any, ids: list[int], cache: Any, logits_to_keep: int) -> torch.Tensor:
    """Run `ids` through `model` with `cache`; return the last `logits_to_keep` logits rows (float32)."""
    kwargs = {_cache_kwarg(type(model)): cache}
    device = getattr(model, "device", None)
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=logits_to_keep, **kwargs)
    return out.logits[0, -logits_to_keep:].float().cpu()  # a no-op on the CPU


def crop(cache: Any, keep: int) -> None:
    """Truncate the cache to its first `keep` positions."""
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)
