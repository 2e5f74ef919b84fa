"""Start servers as subprocesses for tests, and a tiny real-tokenizer model to serve.

    port = free_port()
    srv = start_process(specguard_cmd("serve", "--model", str(tiny_dir), "--port", str(port)), port)
    try: ... httpx.get(srv.url + "/health") ...
    finally: srv.stop()

Every process binds 127.0.0.1, is waited for on its health path, and is stopped by PID (its
own process group) so CI starts and ends with nothing running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def specguard_cmd(*args: str) -> list[str]:
    """The argv that runs the specguard CLI with this interpreter."""
    return [sys.executable, "-m", "specguard", *args]


@dataclass
class ServerHandle:
    """A running subprocess serving HTTP on 127.0.0.1:port."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def kill9(self) -> int | None:
        """SIGKILL the process (and its group) at once, as a crash would."""
        self._signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode


def start_process(args: list[str], port: int, env: dict[str, str] | None = None, health_path: str = "/health",
                  timeout: float = 120.0) -> ServerHandle:
    """Start `args` (it must listen on 127.0.0.1:`port`) and wait until `health_path` answers 200.

    `env` is added to the current environment. Raises RuntimeError with the process output if it
    exits early or is not healthy within `timeout` seconds (and then kills it).
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    fd, name = tempfile.mkstemp(prefix="specguard-server-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    handle = ServerHandle(proc, port, log_path, list(args))
    deadline = time.monotonic() + timeout
    url = handle.url + health_path
    while time.monotonic() < deadline:
        if not handle.alive():
            raise RuntimeError(f"{args!r} exited with {proc.returncode} before it was healthy:\n{handle.output()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop(timeout=5)
    raise RuntimeError(f"{args!r} not healthy at {url} within {timeout} s:\n{handle.output()}")


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
