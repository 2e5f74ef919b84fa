"""A tokenizer for the llama.cpp runtime without transformers (and so without torch) in the process.

The tokenizer files of a GGUF (tokenizer.json, tokenizer_config.json, chat template, config.json,
generation_config.json; no weights) are written once by transformers in a *child process*
(`python -m specguard.runtime.tokenizer FILE.gguf OUT_DIR`), exactly as the torch runtime writes
them when it converts the file. `FileTokenizer` then serves them with the `tokenizers` library
and a sandboxed Jinja environment configured as transformers configures its own, so for chat
messages it produces the same prompt ids, the same decoded text and the same tokenizer digest
as the torch runtime's tokenizer (tests/engine/test_llamacpp_runtime.py compares them), at a
fraction of the memory: a llama.cpp server never imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ModelError

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class FileTokenizer:
    """tokenizer.json + tokenizer_config.json + chat template, as a transformers fast tokenizer reads them."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            config = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
        except (OSError, ValueError, Exception) as exc:  # tokenizers raises its own Exception type
            raise ModelError(f"cannot read the tokenizer in {folder}: {exc}", field="tokenizer") from exc
        self.special = {k: _token_text(config.get(k)) for k in SPECIAL_KEYS}
        template = folder / "chat_template.jinja"
        self.chat_template: str | None = template.read_text("utf-8") if template.is_file() else \
            config.get("chat_template") if isinstance(config.get("chat_template"), str) else None
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._compiled: Any = None

    def _id(self, key: str) -> int | None:
        text = self.special.get(key)
        return self.backend_tokenizer.token_to_id(text) if text is not None else None

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def get_vocab(self) -> dict[str, int]:
        return dict(self.backend_tokenizer.get_vocab(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self.backend_tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def _template(self) -> Any:
        if self._compiled is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
                       sort_keys: bool = False) -> str:
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                  sort_keys=sort_keys)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = env.from_string(self.chat_template or "")
        return self._compiled

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            tokenize: bool = True) -> Any:
        """The chat template rendered (transformers' settings) and encoded without added special tokens."""
        specials = {k: v for k, v in self.special.items() if v is not None}
        text = self._template().render(messages=[dict(m) for m in messages],
                                       add_generation_prompt=add_generation_prompt, **specials)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def write_tokenizer_dir(gguf: Path, out: Path) -> None:
    """Write the GGUF's tokenizer, config and generation config to `out` (transformers; no tensor read)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def write_tokenizer_dir_in_child(gguf: Path, out: Path, timeout: float = 1800.0) -> None:
    """`write_tokenizer_dir` in a child process, so this process never imports transformers or torch."""
    proc = subprocess.run([sys.executable, "-m", "specguard.runtime.tokenizer", str(gguf), str(out)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ModelError(f"cannot read the tokenizer and config from {gguf.name}: {proc.stderr.strip()[-800:]}",
                         field="model", got=str(gguf))


if __name__ == "__main__":
    write_tokenizer_dir(Path(sys.argv[1]), Path(sys.argv[2]))
