"""Server processes and a tiny real-tokenizer model to serve, for tests.

    port = free_port()
    srv = start_process(specguard_cmd("serve", "--model", str(tiny_dir), "--port", str(port)), port)
    try: ... httpx.get(srv.url + "/health") ...
    finally: srv.stop()

The process helpers live in `specguard.testing.processes` (bench/ scripts use them too); every
process binds 127.0.0.1, is waited for on its health path, and is stopped by PID (its own process
group) so CI starts and ends with nothing running.
"""

from __future__ import annotations

from pathlib import Path

from specguard.testing.processes import ServerHandle, free_port, specguard_cmd, start_process

__all__ = ["ServerHandle", "default_tokenizer", "free_port", "make_tiny_model_dir", "specguard_cmd", "start_process"]


def default_tokenizer():
    """The default model's tokenizer, read from the converted-model cache without loading weights."""
    from transformers import AutoTokenizer

    from specguard import models

    _, gguf = models.resolve(None)
    cached = models.model_cache_dir() / models._file_sha256(Path(gguf))
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    return models.load_model().tokenizer


def make_tiny_model_dir(path: Path, seed: int = 0, context: int = 512, layers: int = 2,
                        initializer_range: float = 0.02, tie_word_embeddings: bool = True) -> Path:
    """A ~3M-parameter random Llama with the default model's real tokenizer, saved as an HF directory.

    Loads in well under a second and generates in milliseconds per token; its chat template and
    tokenizer are SmolLM2's, so every server path (chat template, decoding, byte tokens) is real.
    Reuses `path` if it already holds the model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = default_tokenizer()
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        initializer_range=initializer_range, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
