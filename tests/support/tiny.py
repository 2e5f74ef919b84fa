"""Tiny random models for fast, hub-free tests.

`tiny_model(seed, vocab_size)` builds a 2-layer Llama with random weights and a character-free
toy tokenizer (token i <-> the text "<i>"), wrapped as a LoadedModel. Weights depend only on
the seed, so two calls with the same seed give the same model (and the same digest).
"""

from __future__ import annotations

import re

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specguard.models import LoadedModel


class ToyTokenizer:
    """Token i is written "<i>"; encode parses that form back."""

    chat_template = None

    def __init__(self, vocab_size: int, eos_token_id: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(m) % self.vocab_size for m in re.findall(r"<(\d+)>", text)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(f"<{int(i)}>" for i in ids if not (skip_special_tokens and i == self.eos_token_id))

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(self.vocab_size)}


def tiny_model(
    seed: int = 0,
    vocab_size: int = 64,
    layers: int = 2,
    hidden: int = 64,
    eos_token_id: int | None = None,
    scale: float = 1.0,
    name: str | None = None,
) -> LoadedModel:
    """A random tiny Llama. `scale` multiplies the LM head (larger = peakier distributions)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = 0
    model.eval()
    return LoadedModel(
        name=name or f"tiny-{seed}",
        model=model,
        tokenizer=ToyTokenizer(vocab_size, eos_token_id),
        source=f"tiny:{seed}",
    )
