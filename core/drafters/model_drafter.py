"""Model drafters: a small causal LM (`draft-model`) or the target's own first layers
(`early-exit`, self-speculation as in LayerSkip / Kangaroo). Each keeps its own KV cache."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..engine import kv
from ..engine.sampling import decision_scores
from ..errors import UsageError
from ..transcript import SamplingParams
from .base import Drafter, Proposal


class ModelDrafter(Drafter):
    """Draft autoregressively with `model`, stopping early when its confidence (top
    probability) falls below `confidence` (as in SpecDec++'s stop rule, with a fixed threshold).

    Untrusted drafters propose their own argmax. A trusted drafter drafting a seeded sampled
    request uses the same Gumbel noise as the verifier, so its proposals match far more often.
    """

    name = "draft-model"
    trusted = True

    def __init__(self, model: Any, confidence: float = 0.3, name: str | None = None) -> None:
        self.model = model
        self.confidence = confidence
        if name:
            self.name = name
        self._cache: Any = None
        self._seen: list[int] = []
        self._params: SamplingParams | None = None
        self._prompt_len = 0

    def start(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self._cache = kv.new_cache(self.model)
        self._seen = []
        self._params = params
        self._prompt_len = len(prompt_ids)

    @torch.inference_mode()
    def propose(self, context: list[int], k: int) -> Proposal:
        if k <= 0:
            return Proposal([])
        # reuse the cache for the common prefix of what this drafter has already processed
        common = 0
        for a, b in zip(self._seen, context, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)
        kv.crop(self._cache, common)
        self._seen = list(context[:common])
        pending = list(context[common:])
        drafted: list[int] = []
        probs = []
        params = self._params
        for _ in range(k):
            logits = kv.forward(self.model, pending, self._cache, 1)[0]
            self._seen.extend(pending)
            p = torch.softmax(logits, dim=-1)
            position = len(context) + len(drafted) - self._prompt_len
            if params is not None and not params.greedy and params.seed is not None and self.trusted:
                token = int(torch.argmax(decision_scores(logits[None], params, [position])[0]))
            else:
                token = int(torch.argmax(logits))
            drafted.append(token)
            probs.append(p)
            pending = [token]
            if float(p[token]) < self.confidence:
                break
        return Proposal(drafted, torch.stack(probs) if probs else None)

    def finish(self) -> None:
        self._cache = None
        self._seen = []


def early_exit_model(target: Any, layers: int) -> Any:
    """A model that shares the target's first `layers` decoder layers, final norm and LM head."""
    inner = getattr(target, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise UsageError("early-exit drafting needs a decoder-only model with model.layers", got=type(target).__name__)
    total = len(inner.layers)
    if not 1 <= layers < total:
        raise UsageError("early-exit layer count out of range", field="exit_layer", got=layers, expected=f"1..{total - 1}")
    shallow = copy.copy(target)
    shallow._modules = dict(target._modules)
    shallow_inner = copy.copy(inner)
    shallow_inner._modules = dict(inner._modules)
    shallow_inner.layers = nn.ModuleList(list(inner.layers[:layers]))
    shallow.model = shallow_inner
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:layers])
    shallow.config = config
    shallow_inner.config = config
    return shallow
