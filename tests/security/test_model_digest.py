"""The model digest names what computes the outputs: tensors AND config AND generation config (issue 11 §7).

Attacker: a serving node (or audited provider) that keeps the weights of the pinned model but
changes its config (rope_theta, eos ids): the outputs change, so the digest must change too.
"""

from __future__ import annotations

import copy

import pytest
from support.tiny import tiny_model

from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import ModelError
from specguard.models import MODEL_DIGEST_TAG, load_model, model_digest
from specguard.transcript import SamplingParams

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]


def _variant(edit) -> object:
    base = tiny_model(seed=5)
    model = copy.deepcopy(base.model)
    edit(model)
    return model


def test_same_weights_different_rope_theta_differ_and_generate_differently():
    base = tiny_model(seed=5)
    other = tiny_model(seed=5)
    other.model.config.rope_parameters = {**other.model.config.rope_parameters, "rope_theta": 50.0}
    other.model.model.rotary_emb.__init__(other.model.config)  # rebuild the rotary tables from the new config
    assert all((a == b).all() for a, b in zip(base.model.state_dict().values(), other.model.state_dict().values(),
                                              strict=True)), "same tensors"
    params = SamplingParams(max_tokens=16)
    out_a = SpeculativeEngine(base).generate(PROMPT, params).output_ids
    out_b = SpeculativeEngine(other).generate(PROMPT, params).output_ids
    assert out_a != out_b, "the config change changes what the model outputs"
    assert model_digest(base.model) != model_digest(other.model)


def test_same_weights_different_eos_or_generation_config_differ():
    base = model_digest(tiny_model(seed=5).model)
    assert model_digest(_variant(lambda m: setattr(m.generation_config, "eos_token_id", 7))) != base
    assert model_digest(_variant(lambda m: setattr(m.config, "eos_token_id", 7))) != base
    assert model_digest(_variant(lambda m: setattr(m.config, "rms_norm_eps", 1e-3))) != base


def test_same_everything_same_digest_and_bookkeeping_is_ignored(tmp_path):
    a, b = tiny_model(seed=5), tiny_model(seed=5)
    assert a.digest == b.digest == model_digest(a.model)
    assert MODEL_DIGEST_TAG == b"specguard/model-digest/v2"
    bookkeeping = _variant(lambda m: (setattr(m.config, "_name_or_path", "/elsewhere"),
                                      setattr(m.config, "transformers_version", "0.0")))
    assert model_digest(bookkeeping) == a.digest
    # the same model saved and loaded back names itself the same
    a.model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model_digest(again) == a.digest


def test_unhashable_config_fails_with_a_typed_error():
    model = _variant(lambda m: setattr(m.config, "rms_norm_eps", float("nan")))
    with pytest.raises(ModelError, match="config"):
        model_digest(model)


def test_load_model_is_unaffected_by_where_the_model_lives(tmp_path):
    from support.servers import make_tiny_model_dir

    first = make_tiny_model_dir(tmp_path / "one", seed=1)
    second = make_tiny_model_dir(tmp_path / "two", seed=1)
    assert load_model(str(first)).digest == load_model(str(second)).digest
