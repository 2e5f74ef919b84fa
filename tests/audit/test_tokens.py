"""specguard.audit.tokens: a provider's token bytes map onto the reference's ids whatever runtime loaded
the reference (the llama.cpp runtime's FileTokenizer has no `convert_ids_to_tokens`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from specguard.audit.tokens import vocab_bytes
from specguard.runtime.tokenizer import FileTokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer folder (tokenizer.json + tokenizer_config.json), as the llama.cpp runtime writes."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["héllo wörld, ça va? 日本語 ✓"] * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}', "utf-8")
    return folder


def test_file_tokenizer_maps_the_same_bytes_as_transformers(tokenizer_dir: Path):
    file_tok = FileTokenizer(tokenizer_dir)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"), eos_token="<|endoftext|>")
    size = file_tok.backend_tokenizer.get_vocab_size()
    ours, theirs = vocab_bytes(file_tok, size), vocab_bytes(hf_tok, size)
    assert ours == theirs
    multibyte = [b for b in ours if b is not None and any(c >= 0x80 for c in b)]
    assert multibyte, "the vocabulary has byte-level pieces of multi-byte characters"
    assert ours[file_tok.backend_tokenizer.token_to_id("<|endoftext|>")] == b"<|endoftext|>"  # specials: their text
