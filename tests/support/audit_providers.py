"""Helpers for the audit tests: tiny real-tokenizer models and simulated providers on loopback."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from support.servers import free_port, make_tiny_model_dir, specguard_cmd, start_process


def make_audit_model_dir(path: Path, seed: int = 0, layers: int = 4) -> Path:
    """A random 4-layer Llama (peaky logits, so greedy choices are mostly decisive) with SmolLM2's tokenizer."""
    return make_tiny_model_dir(path, seed=seed, layers=layers, initializer_range=0.1, tie_word_embeddings=False)


@contextmanager
def provider(model_dir: Path, *flags: str):
    """A simulated provider subprocess (`specguard audit simulate`) on a free loopback port."""
    port = free_port()
    srv = start_process(specguard_cmd("audit", "simulate", "--reference", str(model_dir), "--port", str(port), *flags), port)
    try:
        yield srv.url + "/v1", srv
    finally:
        srv.stop()

