"""Runtimes (issue 21): the torch runtime's dtype and device, and model identity without dequantizing.

- `--dtype bf16` loads the weights at bf16 (no fp32 tensor is held) and every transcript (so every
  receipt's `predicate.engine.version`) names the runtime; fp32 on the CPU stays the default and
  computes exactly as before (same ids, same logprobs, same engine version string);
- a GGUF is named by its v3 digest, streamed from its tensors and metadata: any change to a
  tensor byte or a hyperparameter changes it, bookkeeping (`general.name`) does not; a malformed
  or truncated file is a ModelError;
- receipts signed with the v2 digest keep naming the model (`accepts_digest`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.servers import make_tiny_model_dir
from support.tiny import tiny_model
from support.tiny_gguf import write_gguf

from specguard import __version__
from specguard.engine.factory import make_engine
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import ModelError, UsageError
from specguard.models import load_model, names_model
from specguard.runtime import ModelRuntime, score
from specguard.runtime.digest import gguf_model_digest
from specguard.runtime.gguf_file import read_gguf
from specguard.transcript import SamplingParams

#: the v2 digest of the default model (SmolLM2-135M Q4_1), as receipts and the committed audit
#: calibration named it before v3
DEFAULT_V2 = "sha256:e4d7f91983f4977df7f7db9e8e1ea05095d860fc9b92802e1f88f4e4e21efc6d"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("rt") / "tiny", seed=3)


def _prompt(model) -> list[int]:
    return model.encode("The quick brown fox jumps over")


def test_bf16_loads_without_an_fp32_copy_and_transcripts_name_the_dtype(tiny_dir):
    model = load_model(str(tiny_dir), dtype="bf16")
    dtypes = {p.dtype for p in model.model.parameters()} | {b.dtype for b in model.model.buffers()
                                                             if b.is_floating_point() and b.numel() > 64}
    assert dtypes == {torch.bfloat16}, dtypes
    assert isinstance(model, ModelRuntime)
    assert (model.runtime, model.dtype, model.device) == ("torch", "bf16", "cpu")
    engine = make_engine(model, SpeculativeEngine(model).drafter, "specguard")
    t = engine.generate(_prompt(model), SamplingParams(max_tokens=8))
    assert len(t.output_ids) == 8
    assert t.engine_version == f"{__version__} (torch bf16 cpu)" == engine.capabilities.version
    assert t.to_json()["engine_version"].endswith("(torch bf16 cpu)")  # what the receipt's engine.version signs
    assert model.describe()["dtype"] == "bfloat16"


def test_fp32_is_the_default_and_unchanged(tiny_dir):
    default = load_model(str(tiny_dir))
    explicit = load_model(str(tiny_dir), dtype="fp32", device="cpu")
    assert default.dtype == "fp32" and default.runtime_label == ""
    params = SamplingParams(max_tokens=12)
    a = SpeculativeEngine(default).generate(_prompt(default), params)
    b = SpeculativeEngine(explicit).generate(_prompt(explicit), params)
    assert a.output_ids == b.output_ids
    assert [r.logprob for r in a.tokens] == [r.logprob for r in b.tokens]
    assert a.engine_version == b.engine_version == __version__
    assert default.digest == explicit.digest
    # the runtime protocol's teacher-forced scoring agrees with what the engine emitted
    scored = score(default, _prompt(default), a.output_ids)
    assert scored.agreement == 1.0
    assert [p.logprob for p in scored.positions] == pytest.approx([r.logprob for r in a.tokens], abs=1e-4)


def test_bf16_and_fp32_name_the_same_directory_differently(tiny_dir):
    """A directory's (v2) digest hashes the tensors as held: another dtype is another computation."""
    assert load_model(str(tiny_dir), dtype="bf16").digest != load_model(str(tiny_dir)).digest


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"dtype": "int4"}, "--dtype"), ({"device": "tpu"}, "--device"), ({"runtime": "onnx"}, "runtime"),
    ({"runtime": "llamacpp", "dtype": "bf16"}, "--dtype"),
])
def test_unknown_runtime_options_are_usage_errors(tiny_dir, kwargs, field):
    with pytest.raises(UsageError) as err:
        load_model(str(tiny_dir), **kwargs)
    assert err.value.field == field


def test_cuda_runs_where_there_is_one_and_is_refused_where_there_is_none(tiny_dir):
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA") as err:
            load_model(str(tiny_dir), device="cuda")
        assert err.value.field == "--device"
        return
    gpu = load_model(str(tiny_dir), device="cuda")
    t = SpeculativeEngine(gpu).generate(_prompt(gpu), SamplingParams(max_tokens=8))
    assert len(t.output_ids) == 8 and t.engine_version == f"{__version__} (torch fp32 cuda)"


def test_the_llamacpp_runtime_needs_a_gguf(tiny_dir):
    with pytest.raises(ModelError, match="GGUF"):
        load_model(str(tiny_dir), runtime="llamacpp")


# -- the v3 digest of a GGUF -------------------------------------------------------------------

def _gguf(tmp_path: Path, name: str, seed: int = 4, edit=None) -> Path:
    lm = tiny_model(seed=seed, name=name)
    if edit is not None:
        edit(lm.model)
    return write_gguf(lm, tmp_path / f"{name}.gguf")


def test_v3_digest_binds_tensors_and_hyperparameters_not_bookkeeping(tmp_path):
    base = gguf_model_digest(_gguf(tmp_path, "a"))
    assert gguf_model_digest(_gguf(tmp_path, "renamed")) == base, "general.name is bookkeeping"
    assert gguf_model_digest(_gguf(tmp_path, "other-seed", seed=5)) != base

    def bump_one_weight(model):
        with torch.no_grad():
            model.model.norm.weight[0] += 1e-3

    assert gguf_model_digest(_gguf(tmp_path, "one-weight", edit=bump_one_weight)) != base

    def other_eps(model):
        model.config.rms_norm_eps = 1e-3

    assert gguf_model_digest(_gguf(tmp_path, "eps", edit=other_eps)) != base
    assert base.startswith("sha256:") and len(base) == 71


def test_streaming_reader_matches_the_gguf_package(tmp_path):
    import gguf

    path = _gguf(tmp_path, "layout")
    ours = {t.name: (t.offset, t.n_bytes, t.type_name) for t in read_gguf(path).tensors}
    theirs = {t.name: (int(t.data_offset), int(t.n_bytes), t.tensor_type.name) for t in gguf.GGUFReader(path).tensors}
    assert ours == theirs


def test_malformed_and_truncated_ggufs_are_model_errors(tmp_path):
    path = _gguf(tmp_path, "whole")
    data = path.read_bytes()
    cases = {"magic": b"GGUX" + data[4:], "header": data[:200], "data": data[: len(data) - 64]}
    for label, blob in cases.items():
        bad = tmp_path / f"bad-{label}.gguf"
        bad.write_bytes(blob)
        with pytest.raises(ModelError):
            gguf_model_digest(bad)
    huge_count = data[:8] + (1 << 40).to_bytes(8, "little") + data[16:]
    (tmp_path / "count.gguf").write_bytes(huge_count)
    with pytest.raises(ModelError, match="implausible"):
        read_gguf(tmp_path / "count.gguf")


def test_default_model_is_named_by_v3_and_still_accepts_its_v2_digest(default_model):
    gguf = default_model.gguf_path
    assert gguf is not None
    assert default_model.digest == gguf_model_digest(gguf) != DEFAULT_V2
    assert default_model.accepts_digest(DEFAULT_V2), "receipts signed before v3 keep naming the model"
    assert names_model(default_model, DEFAULT_V2)
    assert not default_model.accepts_digest("sha256:" + "0" * 64)
    assert not names_model(default_model, None)
