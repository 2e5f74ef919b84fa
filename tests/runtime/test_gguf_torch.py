"""A GGUF into the torch runtime tensor by tensor (issue 21), checked against transformers' own GGUF load.

- at fp32 the streamed model equals `from_pretrained(gguf_file=...)` tensor for tensor and computes
  identical logits; at bf16/fp16 it equals that fp32 load cast to the dtype (and transformers' own
  load at the dtype); for F32, F16, BF16, Q8_0 and Q4_1 tensors, tied and untied outputs, whole
  tensors or many chunks of rows (the q/k permutation crosses chunks);
- no fp32 copy of the model exists at any time: the skeleton is on the meta device, every
  parameter is allocated at the target dtype, and each fp32 temporary is at most one chunk;
- `load_model(FILE.gguf, dtype=...)` names the model by its v3 digest, caches fp32 weights of a
  small GGUF (a later fp32 load memory-maps them: same weights) and never an fp32 copy for bf16;
- unsupported or inconsistent files are `ModelError`s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support.tiny import tiny_model
from support.tiny_gguf import write_gguf

from specguard.errors import ModelError
from specguard.models import load_model, model_cache_dir, model_digest
from specguard.runtime import gguf_torch
from specguard.runtime.digest import gguf_model_digest
from specguard.runtime.gguf_torch import load_gguf_weights

#: the machine's model cache (conftest.py), before each test here moves it to a temporary folder
MACHINE_CACHE = os.environ["SPECGUARD_MODEL_CACHE"]
#: the v2 digest of the default model (SmolLM2-135M Q4_1) that receipts signed before v3 name
DEFAULT_V2 = "sha256:e4d7f91983f4977df7f7db9e8e1ea05095d860fc9b92802e1f88f4e4e21efc6d"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IDS = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 12]])
#: where the torch runtime can put the weights on this machine: the same tests run on each
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(autouse=True)
def _own_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECGUARD_MODEL_CACHE", str(tmp_path / "model-cache"))


def _gguf(tmp_path: Path, qtype: str = "F32", drop: tuple[str, ...] = (), seed: int = 7) -> Path:
    return write_gguf(tiny_model(seed=seed), tmp_path / f"tiny-{qtype}-{len(drop)}-{seed}.gguf", qtype, drop)


def _transformers(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()


def _config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def _assert_same_state(ours, reference) -> None:
    a, b = ours.state_dict(), reference.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].cpu(), b[name].cpu()), f"{name} differs"


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_1"])
@pytest.mark.parametrize("tied", [False, True])
def test_fp32_equals_transformers_gguf_load_with_identical_logits(tmp_path, qtype, tied):
    path = _gguf(tmp_path, qtype, drop=("output.weight",) if tied else ())
    reference = _transformers(path)
    ours = load_gguf_weights(path, _config(path), torch.float32)
    _assert_same_state(ours, reference)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    with torch.no_grad():
        assert torch.equal(ours(IDS).logits, reference(IDS).logits)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_equals_the_fp32_load_cast_and_transformers_own(tmp_path, dtype):
    path = _gguf(tmp_path, "Q8_0")
    fp32 = _transformers(path)
    ours = load_gguf_weights(path, _config(path), DTYPES[dtype])
    cast = {k: v.to(DTYPES[dtype]) for k, v in fp32.state_dict().items()}
    state = ours.state_dict()
    assert sorted(state) == sorted(cast)
    assert all(torch.equal(state[k], cast[k]) for k in cast)
    reference = _transformers(path, DTYPES[dtype])
    _assert_same_state(ours, reference)
    with torch.no_grad():
        assert torch.equal(ours(IDS).logits, reference(IDS).logits)


def test_chunks_of_rows_give_the_same_weights(tmp_path, monkeypatch):
    """Tiny chunks (a few rows) cut every matrix, including the permuted q/k ones, into many pieces."""
    path = _gguf(tmp_path, "Q8_0")
    whole = load_gguf_weights(path, _config(path), torch.float32)
    monkeypatch.setattr(gguf_torch, "CHUNK_ELEMENTS", 3 * 64)
    chunked = load_gguf_weights(path, _config(path), torch.float32)
    _assert_same_state(chunked, whole)


def test_no_fp32_copy_of_the_model_is_ever_held(tmp_path, monkeypatch):
    """Structure, not timing: a meta skeleton, parameters born at bf16, fp32 temporaries of one chunk."""
    path = _gguf(tmp_path, "Q8_0")
    chunk = 4 * 64
    monkeypatch.setattr(gguf_torch, "CHUNK_ELEMENTS", chunk)
    skeletons, temporaries, parameters = [], [], []
    empty_model, rows, set_parameter = gguf_torch._empty_model, gguf_torch._dequantized_rows, gguf_torch._set_parameter

    def spy_empty(config, dtype):
        model = empty_model(config, dtype)
        skeletons.append({p.device.type for p in model.parameters()})
        return model

    def spy_rows(f, tensor, start, stop):
        values = rows(f, tensor, start, stop)
        temporaries.append(values.size)
        return values

    def spy_set(model, name, value):
        parameters.append(value.dtype)
        set_parameter(model, name, value)

    monkeypatch.setattr(gguf_torch, "_empty_model", spy_empty)
    monkeypatch.setattr(gguf_torch, "_dequantized_rows", spy_rows)
    monkeypatch.setattr(gguf_torch, "_set_parameter", spy_set)
    model = load_gguf_weights(path, _config(path), torch.bfloat16)
    assert skeletons == [{"meta"}]
    assert parameters and set(parameters) == {torch.bfloat16}
    assert max(temporaries) <= chunk, "an fp32 temporary larger than one chunk"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("device", DEVICES)
def test_load_model_streams_a_gguf_at_the_requested_dtype_and_device(tmp_path, device):
    path = _gguf(tmp_path, "Q8_0")
    model = load_model(str(path), dtype="bf16", device=device)
    assert (model.runtime, model.dtype, model.device) == ("torch", "bf16", device)
    assert {p.device.type for p in model.model.parameters()} == {device}
    assert model.digest == gguf_model_digest(path), "a GGUF is named by its v3 digest at any dtype"
    assert model.gguf_path == path
    reference = {k: v.to(torch.bfloat16) for k, v in _transformers(path).state_dict().items()}
    state = model.model.state_dict()
    assert all(torch.equal(state[k].cpu(), reference[k]) for k in reference)
    assert not list(model_cache_dir().glob("*/model.safetensors")), "a bf16 load writes no fp32 copy"


def test_fp32_load_caches_small_models_and_keeps_the_v2_digest(tmp_path):
    path = _gguf(tmp_path, "Q4_1")
    first = load_model(str(path))
    cached = list(model_cache_dir().glob("*/model.safetensors"))
    assert len(cached) == 1, "the fp32 weights of a small GGUF are cached after its first fp32 load"
    second = load_model(str(path))  # memory-maps the cache
    _assert_same_state(second.model, first.model)
    _assert_same_state(first.model, _transformers(path))
    assert first.digest == second.digest == gguf_model_digest(path)
    reference = _transformers(path)
    del reference.config.quantization_config  # as the one-time fp32 conversion before streaming saved it
    v2 = model_digest(reference)
    assert first.legacy_digest == v2 and second.accepts_digest(v2), "receipts signed with v2 keep verifying"


def test_a_parameter_without_a_tensor_is_a_model_error(tmp_path):
    path = _gguf(tmp_path, "F32", drop=("blk.1.ffn_down.weight",))
    with pytest.raises(ModelError, match="no tensor") as err:
        load_gguf_weights(path, _config(path), torch.float32)
    assert "model.layers.1.mlp.down_proj.weight" in str(err.value)


def test_a_tensor_of_the_wrong_shape_is_a_model_error(tmp_path):
    path = _gguf(tmp_path, "F32")
    config = _config(path)
    config.intermediate_size *= 2  # the file's ffn tensors no longer fit
    with pytest.raises(ModelError, match="shape"):
        load_gguf_weights(path, config, torch.float32)


def test_merging_architectures_are_refused(tmp_path, monkeypatch):
    path = _gguf(tmp_path, "F32")
    info = gguf_torch.read_gguf(path)
    info.metadata["general.architecture"] = "qwen2moe"
    monkeypatch.setattr(gguf_torch, "read_gguf", lambda _path: info)
    with pytest.raises(ModelError, match="tensor by tensor"):
        load_gguf_weights(path, _config(path), torch.float32)


@pytest.mark.model
def test_default_model_streamed_has_the_v2_digest_old_receipts_name(monkeypatch):
    """SmolLM2-135M Q4_1 streamed at fp32 hashes (v2) to the digest receipts and the committed audit
    calibration named when it was converted by transformers (tests/engine/test_runtimes.py)."""
    from transformers import AutoConfig, GenerationConfig

    from specguard.models import resolve
    from specguard.runtime.llamacpp import _tokenizer_dir

    monkeypatch.setenv("SPECGUARD_MODEL_CACHE", MACHINE_CACHE)  # its tokenizer files; no weights read
    path = Path(resolve(None)[1])
    folder = _tokenizer_dir(path)
    model = load_gguf_weights(path, AutoConfig.from_pretrained(str(folder)), torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(str(folder))
    assert model_digest(model) == DEFAULT_V2


def test_streamed_safetensors_read_back_by_the_safetensors_library(tmp_path):
    from safetensors import safe_open

    from specguard.runtime.gguf_torch import write_safetensors

    tensors = {"a": torch.randn(3, 5), "b.bf16": torch.randn(7).to(torch.bfloat16),
               "c": torch.randn(2, 2, 2).to(torch.float16), "empty": torch.zeros(0, 4)}
    out = tmp_path / "x.safetensors"
    write_safetensors(tensors, out, {"format": "pt"})
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(tensors)
        for name, value in tensors.items():
            assert torch.equal(f.get_tensor(name), value), name


def test_a_transposed_tensor_with_the_right_size_is_a_model_error(tmp_path):
    """Same number of values, other shape: refused, never reshaped into a silently different model."""
    lm = tiny_model(seed=7)
    up = lm.model.model.layers[0].mlp.up_proj
    up.weight = torch.nn.Parameter(up.weight.detach().T.contiguous())
    path = write_gguf(lm, tmp_path / "transposed.gguf")
    with pytest.raises(ModelError, match="shape") as err:
        load_gguf_weights(path, _config(path), torch.float32)
    assert "blk.0.ffn_up.weight" in str(err.value)
