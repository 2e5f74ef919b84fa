"""Never accuse an honest provider: llama.cpp's own OpenAI server on the default model's GGUF.

An auditor who does not know the provider's engine audits with the default honest class (`auto`,
which is `cross-engine` with the committed calibration of the default model). A real
`python -m llama_cpp.server` process on loopback serves the SAME SmolLM2 GGUF with its own
defaults (repeat_penalty 1.1: an auditor cannot control a provider's defaults), and must not be
called substituted; next to it the simulated q4 / prune:2 / other-model substitutes must still be
caught against the same class.
"""

from __future__ import annotations

import json

import pytest
from support.audit_providers import make_audit_model_dir, provider
from support.servers import free_port, start_process

from specguard.audit import calibrate
from specguard.audit.run import AuditConfig, run_audit
from specguard.drafters.llamacpp import target_gguf

pytestmark = pytest.mark.model

BUDGET, TOKENS = 8, 32  # the committed calibration's prompts and (more than) its token budget
SUB_BUDGET, SUB_TOKENS = 4, 16


@pytest.fixture(scope="module")
def reference():
    from specguard.models import load_model

    return load_model()


@pytest.fixture(scope="module")
def llamacpp_url(reference):
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (the llamacpp extra)")
    import sys

    gguf = target_gguf(reference)
    assert gguf is not None and gguf.is_file(), "the default model is loaded from its GGUF"
    port = free_port()
    srv = start_process([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                         "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"], port, health_path="/v1/models")
    try:
        yield srv.url + "/v1"
    finally:
        srv.stop()


def _audit(url, reference, out, **kw):
    args = dict(base_url=url, model="smollm2-135m", reference="smollm2-135m", budget=BUDGET, max_tokens=TOKENS,
                timeout=120, max_retries=2)
    args.update(kw)
    return run_audit(AuditConfig(**args), out, reference=reference)


def test_committed_calibration_is_cross_engine_and_used_by_default(reference):
    path = calibrate.committed(reference)
    assert path is not None, "a calibration of the default model is committed under specguard/audit/data"
    cal = calibrate.load(path, reference)
    assert calibrate.resolve_class("auto", cal) == "cross-engine"
    null = calibrate.honest_null(cal, "auto")
    assert {"llamacpp-t1", "llamacpp-t2", "llamacpp-b8"} <= set(null["setups"])
    # llama.cpp disagrees with fp32 torch far more than the torch set-ups do: the reason the class exists
    setups = cal["setups"]
    assert setups["llamacpp-t1"]["mean_abs_delta"] > 10 * setups["fp32-threads"]["mean_abs_delta"]
    assert "some honest engine" in null["claim"]
    assert "identical implementation" in calibrate.honest_null(cal, "fp32")["claim"]


def test_honest_llamacpp_server_is_not_called_substituted(llamacpp_url, reference, tmp_path):
    # as an auditor would run it: default class, nothing provider-specific sent
    rep = _audit(llamacpp_url, reference, tmp_path / "default")
    assert rep["honest_class"]["name"] == "cross-engine"
    assert rep["prompts"]["answered"] == BUDGET
    assert rep["verdict"] != "substituted", rep["reasons"]
    assert not any(rep["rejected"].values())
    # its default repeat_penalty 1.1 shows up as positions where its own logprobs rank the
    # reference's (earlier-seen) choice above its pick: counted, left out of token agreement
    assert rep["penalty_adjusted"]["positions"] > 0
    # with plain greedy decoding asked for explicitly, nothing is left out and nothing rejects
    plain = _audit(llamacpp_url, reference, tmp_path / "plain", budget=4, extra_body={"repeat_penalty": 1.0})
    assert json.loads((tmp_path / "plain" / "raw.jsonl").read_text().splitlines()[0])["request"]["repeat_penalty"] == 1.0
    assert plain["penalty_adjusted"]["positions"] == 0
    assert plain["verdict"] != "substituted", plain["reasons"]
    assert plain["claim"].startswith("consistent with the claimed weights on some honest engine")
    # llama.cpp's noise is what the class accepts: its answers sit inside the cross-engine pool
    assert plain["honest_class"]["worst_setup"].startswith("llamacpp")


def test_completions_endpoint_against_llamacpp(llamacpp_url, reference, tmp_path):
    rep = _audit(llamacpp_url, reference, tmp_path / "cmpl", endpoint="completions", budget=2, max_tokens=16,
                 extra_body={"repeat_penalty": 1.0})
    assert rep["endpoint"] == "completions"
    assert rep["prompts"]["answered"] == 2 and rep["prompts"]["with_logprobs"] == 2
    assert rep["tokens"]["total"] > 0
    assert rep["verdict"] != "substituted", rep["reasons"]


@pytest.mark.parametrize("flags", [("--substitute", "q4"), ("--substitute", "prune:2"), ("other-model",)],
                         ids=["q4", "prune2", "other-model"])
def test_substitutes_are_still_caught_against_the_cross_engine_class(flags, reference, tmp_path):
    if flags == ("other-model",):
        model_dir, extra = make_audit_model_dir(tmp_path / "other", seed=1), ()
    else:
        model_dir, extra = "smollm2-135m", flags
    with provider(model_dir, *extra) as (url, _srv):
        rep = _audit(url, reference, tmp_path / "sub", budget=SUB_BUDGET, max_tokens=SUB_TOKENS)
    assert rep["honest_class"]["name"] == "cross-engine"
    assert rep["verdict"] == "substituted", rep["reasons"]
    assert rep["rejected"]["token_agreement"]
    assert any("outside the noise of every honest set-up" in r for r in rep["reasons"])
