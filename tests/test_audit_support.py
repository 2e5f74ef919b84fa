"""Helpers for the audit tests: tiny real-tokenizer models and simulated providers on loopback."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from servers import free_port, specguard_cmd, start_process

_TOKENIZER = []


def _tokenizer():
    from specguard.models import load_model

    if not _TOKENIZER:
        _TOKENIZER.append(load_model().tokenizer)
    return _TOKENIZER[0]


def make_audit_model_dir(path: Path, seed: int = 0, layers: int = 4) -> Path:
    """A random 4-layer Llama (peaky logits, so greedy choices are mostly decisive) with SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@contextmanager
def provider(model_dir: Path, *flags: str):
    """A simulated provider subprocess (`specguard audit simulate`) on a free loopback port."""
    port = free_port()
    srv = start_process(specguard_cmd("audit", "simulate", "--reference", str(model_dir), "--port", str(port), *flags), port)
    try:
        yield srv.url + "/v1", srv
    finally:
        srv.stop()


def test_model_dir_is_reused(tmp_path):
    first = make_audit_model_dir(tmp_path / "m", seed=3)
    mtime = (first / "config.json").stat().st_mtime_ns
    assert make_audit_model_dir(tmp_path / "m", seed=3) == first
    assert (first / "config.json").stat().st_mtime_ns == mtime
