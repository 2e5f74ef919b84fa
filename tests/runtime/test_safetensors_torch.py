"""A model directory stored in fp32 loaded at bf16/fp16 tensor by tensor (issue 21): the same model as
transformers' own load at that dtype (weights, logits, digest), without holding the fp32 file mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.servers import make_tiny_model_dir

from specguard.models import load_model, model_digest
from specguard.runtime import safetensors_torch
from specguard.runtime.safetensors_torch import load_cast

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
IDS = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 12]])


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_dir(request, tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("st") / "tiny", seed=5, tie_word_embeddings=request.param)


def _transformers(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cast_load_equals_transformers_load_at_that_dtype(tiny_dir, dtype):
    ours = load_model(str(tiny_dir), dtype=dtype)
    reference = _transformers(tiny_dir, DTYPES[dtype])
    a, b = ours.model.state_dict(), reference.state_dict()
    assert sorted(a) == sorted(b)
    assert all(a[k].dtype == DTYPES[dtype] and torch.equal(a[k], b[k]) for k in b)
    with torch.no_grad():
        assert torch.equal(ours.model(IDS).logits, reference(IDS).logits)
    assert ours.digest == model_digest(reference), "a directory's v2 digest at that dtype is unchanged"
    assert ours.model.generation_config.to_dict() == reference.generation_config.to_dict()


def test_reads_the_files_and_never_maps_them(tiny_dir, monkeypatch):
    """The cast path reads tensors with file reads: transformers' memory-mapping loader is never called."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("transformers' loader (memory-mapped safetensors) was used")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    model = load_model(str(tiny_dir), dtype="bf16")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    with pytest.raises(AssertionError, match="memory-mapped"):
        load_model(str(tiny_dir))  # fp32 stored and asked: transformers maps it (no copy to avoid)


def test_transformers_loads_what_is_stored_at_the_requested_dtype_or_renamed(tiny_dir, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(tiny_dir))
    assert load_cast(tiny_dir, config, torch.float32) is None, "fp32 stored, fp32 asked: mapped without a copy"
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for item in tiny_dir.iterdir():
        (renamed / item.name).write_bytes(item.read_bytes())
    from safetensors.torch import load_file, save_file

    state = load_file(str(renamed / "model.safetensors"))
    state = {("transformer." + k if k.startswith("model.") else k): v for k, v in state.items()}
    save_file(state, str(renamed / "model.safetensors"), metadata={"format": "pt"})
    assert load_cast(renamed, config, torch.bfloat16) is None, "names transformers would map: its loader decides"


def test_a_tensor_of_the_wrong_shape_is_a_model_error(tiny_dir):
    from transformers import AutoConfig

    from specguard.errors import ModelError

    config = AutoConfig.from_pretrained(str(tiny_dir))
    config.intermediate_size *= 2
    with pytest.raises(ModelError, match="shape"):
        safetensors_torch.load_cast(tiny_dir, config, torch.bfloat16)
