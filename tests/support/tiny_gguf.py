"""Write a tiny random torch Llama (support.tiny) as an F32 GGUF that llama.cpp loads.

The engine contract runs every registered engine on the same tiny models; an engine that runs a
GGUF (llama.cpp) finds it through the model's name, which is the GGUF path (as for a user's
`--model file.gguf`). The weights are stored unquantized (F32), so llama.cpp computes the same
function as the torch model up to floating-point rounding. The vocabulary is the toy tokenizer's
("<i>" for token i) as a SentencePiece-style vocabulary; llama.cpp never tokenizes text here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specguard.models import LoadedModel
from support.tiny import tiny_model


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k layout to llama.cpp's interleaved one (as convert_hf_to_gguf.py does)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(lm: LoadedModel, path: Path, qtype: str = "F32", drop: tuple[str, ...] = ()) -> Path:
    """Write `lm` (a tiny LlamaForCausalLM) to `path` as a GGUF: matrices as `qtype` (F32, F16, BF16,
    Q8_0, Q4_1, ...: quantized by the `gguf` package), norms as F32; GGUF tensors named in `drop` are
    left out (without `output.weight` the model's output is tied to its embedding)."""
    import gguf
    from gguf.quants import quantize

    quant = gguf.GGMLQuantizationType[qtype]

    def add(name: str, value: np.ndarray) -> None:
        if name in drop:
            return
        if value.ndim < 2 or quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(value))
        else:
            writer.add_tensor(name, quantize(np.ascontiguousarray(value), quant), raw_dtype=quant)

    config = lm.model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(lm.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(config.hidden_size // n_head)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    vocab = config.vocab_size
    writer.add_token_list([f"<{i}>" for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([gguf.TokenType.NORMAL] * vocab)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    state = {k: v.detach().to("cpu").float().numpy() for k, v in lm.model.state_dict().items()}
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for key, value in state.items():
        if key in names:
            add(names[key], value)
            continue
        parts = key.split(".")  # model.layers.N.<module>.weight
        if parts[:2] != ["model", "layers"] or parts[-1] != "weight":
            continue  # rotary buffers and the like
        module = ".".join(parts[3:-1])
        if module == "self_attn.q_proj":
            value = _permute(value, n_head)
        elif module == "self_attn.k_proj":
            value = _permute(value, n_kv)
        add(f"blk.{parts[2]}.{layer[module]}.weight", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf_model(directory: Path, **kwargs) -> LoadedModel:
    """`support.tiny.tiny_model(**kwargs)` named by a GGUF of itself written under `directory`."""
    lm = tiny_model(**kwargs)
    tag = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    path = write_gguf(lm, Path(directory) / f"tiny-{tag or 'default'}.gguf")
    lm.name = str(path)
    return lm
