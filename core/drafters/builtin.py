"""Built-in drafters, registered as an ordinary plugin: none, ngram, draft-model, early-exit, llamacpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..hookspecs import hookimpl
from ..models import LoadedModel
from .base import Drafter, NoDrafter
from .ngram import NgramDrafter

if TYPE_CHECKING:
    from ..hookspecs import Register


def _none(target: LoadedModel, options: dict[str, Any]) -> Drafter:
    return NoDrafter()


def _ngram(target: LoadedModel, options: dict[str, Any]) -> Drafter:
    return NgramDrafter(max_ngram=int(options.get("max_ngram", 3)), min_ngram=int(options.get("min_ngram", 1)))


def _draft_model(target: LoadedModel, options: dict[str, Any]) -> Drafter:
    from ..errors import UsageError
    from ..models import load_model

    ref = options.get("draft_model")
    if ref is None:
        raise UsageError("the draft-model drafter needs --draft-model REF (a model with the target's tokenizer)")
    draft = ref if isinstance(ref, LoadedModel) else load_model(str(ref))
    if draft.vocab_size != target.vocab_size:
        raise UsageError("draft model vocabulary differs from the target's", got=draft.vocab_size, expected=target.vocab_size)
    from .model_drafter import ModelDrafter  # torch: imported only when a model drafter is built

    return ModelDrafter(draft.model, confidence=float(options.get("confidence", 0.3)))


def _early_exit(target: LoadedModel, options: dict[str, Any]) -> Drafter:
    total = int(target.model.config.num_hidden_layers)
    layers = int(options.get("exit_layer") or max(1, total // 4))
    from .model_drafter import ModelDrafter, early_exit_model

    drafter = ModelDrafter(early_exit_model(target.model, layers), confidence=float(options.get("confidence", 0.3)), name="early-exit")
    return drafter


def _llamacpp(target: LoadedModel, options: dict[str, Any]) -> Drafter:
    from .llamacpp import build  # imports llama_cpp only when this drafter is built

    return build(target, options)


@hookimpl
def register_drafters(register: Register) -> None:
    register("none", _none, "plain decoding through the same verification loop")
    register("ngram", _ngram, "prompt lookup: copy continuations of the context's last n-gram")
    register("draft-model", _draft_model, "a small causal LM with the target's tokenizer (--draft-model)")
    register("early-exit", _early_exit, "self-speculation: the target's first L layers + final norm + LM head")
    register("llamacpp", _llamacpp, "untrusted: llama.cpp on the target's GGUF drafts long runs (llama-cpp-python)")
