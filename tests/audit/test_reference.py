"""Audits at real size (issue 21): a GGUF reference is loaded and scored by llama.cpp as is.

- the GGUF path never builds a torch model: the torch loaders and the torch scorer are replaced by
  spies that fail the test if called;
- an honest llama.cpp server of the GGUF, audited against that GGUF with default options, is not
  called substituted; another model served under its name is.

The provider models: A is the default model's GGUF (llama.cpp's own OpenAI server, real tokenizer
and chat template); B is a random 4-layer Llama with the same tokenizer (`make_audit_model_dir`,
seed 1), whose greedy tokens differ from A's at almost every position, so the verdict does not
hinge on a few near-ties (deterministic: greedy decoding, fixed seeds and prompts).
"""

from __future__ import annotations

import sys

import pytest
from support.audit_providers import make_audit_model_dir, provider
from support.servers import free_port, start_process

from specguard.audit import reference as audit_reference
from specguard.audit.run import AuditConfig, run_audit
from specguard.llamacpp_runtime import target_gguf
from specguard.models import resolve

pytestmark = pytest.mark.model
pytest.importorskip("llama_cpp", reason="the llama.cpp reference needs llama-cpp-python (make install)")


@pytest.fixture(scope="module")
def gguf() -> str:
    kind, location = resolve(None)
    assert kind == "gguf"
    return str(location)


def _no_torch(monkeypatch) -> list[str]:
    calls: list[str] = []

    def spy(name):
        def fail(*_a, **_k):
            calls.append(name)
            raise AssertionError(f"{name} called on the GGUF reference path")
        return fail

    import specguard.models as models
    import specguard.runtime.gguf_torch as gguf_torch

    monkeypatch.setattr(gguf_torch, "load_gguf_torch", spy("load_gguf_torch"))
    monkeypatch.setattr(models, "_load_dir", spy("_load_dir"))
    monkeypatch.setattr(audit_reference, "rescore", spy("torch rescore"))
    return calls


def test_a_gguf_reference_never_loads_a_torch_model(gguf, monkeypatch):
    calls = _no_torch(monkeypatch)
    cfg = AuditConfig(base_url="http://127.0.0.1:9/v1", model="m", reference=gguf)
    ref = audit_reference.load_audit_reference(cfg)
    assert ref.model is None and ref.runtime == "llamacpp" and target_gguf(ref) is not None
    ids = ref.encode_chat([{"role": "user", "content": "Write a haiku about autumn leaves."}])
    toks, lps, tops = audit_reference.greedy_reference(ref, ids, 8, ref.eos_token_ids)
    rows = audit_reference.rescore_reference(ref, [(ids, toks, [list(t) for t in tops])])[0]
    assert [r.token_id for r in rows] == toks and all(r.agrees for r in rows)
    assert max(abs(r.logprob - lp) for r, lp in zip(rows, lps, strict=True)) < 1e-4
    text = ref.tokenizer.decode(toks, skip_special_tokens=False)
    walked, rest = audit_reference.align_reference(ref, ids, text, 8)
    assert rest == 0 and [p.token_id for p in walked] == toks
    assert calls == []


def test_torch_is_chosen_when_asked_or_needed(gguf):
    assert audit_reference.reference_runtime(gguf) == "llamacpp"
    assert audit_reference.reference_runtime(gguf, "torch") == "torch"
    assert audit_reference.reference_runtime(gguf, needs_torch=True) == "torch"
    from specguard.audit import AuditUsageError

    with pytest.raises(AuditUsageError, match="reference runtime"):
        audit_reference.reference_runtime(gguf, "vllm")


@pytest.fixture(scope="module")
def llamacpp_url(gguf):
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (the llamacpp extra)")
    port = free_port()
    srv = start_process([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                         "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"], port, health_path="/v1/models")
    try:
        yield srv.url + "/v1"
    finally:
        srv.stop()


def _audit(url: str, gguf: str, out, **kw):
    args = {"budget": 4, "max_tokens": 16, **kw}
    cfg = AuditConfig(base_url=url, model="smollm2-135m", reference=gguf, timeout=120, max_retries=2, **args)
    return run_audit(cfg, out)  # the reference loaded by the audit itself, as the CLI does


def test_honest_llamacpp_server_is_consistent_against_its_gguf(llamacpp_url, gguf, tmp_path, monkeypatch):
    calls = _no_torch(monkeypatch)
    # all 8 built-in prompts x 32 tokens: enough decisive positions for the run to be powered
    rep = _audit(llamacpp_url, gguf, tmp_path / "honest", budget=8, max_tokens=32, extra_body={"repeat_penalty": 1.0})
    assert calls == []
    assert rep["reference"]["runtime"] == "llamacpp"
    assert rep["prompts"]["answered"] == 8
    assert rep["verdict"] == "consistent", rep["reasons"]
    assert not any(rep["rejected"].values())
    # nothing provider-specific sent (the server's repeat_penalty 1.1 applies): never "substituted"
    default = _audit(llamacpp_url, gguf, tmp_path / "default")
    assert default["verdict"] != "substituted", default["reasons"]
    assert not any(default["rejected"].values())


def test_another_model_under_its_name_is_substituted(gguf, tmp_path, monkeypatch):
    other = make_audit_model_dir(tmp_path / "other", seed=1)
    with provider(other, "--served-name", "smollm2-135m") as (url, _srv):
        calls = _no_torch(monkeypatch)
        rep = _audit(url, gguf, tmp_path / "sub")
    assert calls == []
    assert rep["verdict"] == "substituted", rep["reasons"]
    assert rep["rejected"]["token_agreement"]


def test_calibration_on_first_use_is_measured_on_llamacpp_and_cached(gguf, tmp_path, monkeypatch, capsys):
    from specguard.audit import calibrate

    monkeypatch.setenv("SPECGUARD_HOME", str(tmp_path / "home"))
    calls = _no_torch(monkeypatch)
    ref = audit_reference.load_reference(gguf)
    prompts = [ref.encode_chat([{"role": "user", "content": t}]) for t in ("Name a colour.", "Count to three.")]
    cal = calibrate.first_use(ref, prompts, 8, 5, calibrate.SETUPS)
    assert calls == []
    setups = cal["setups"]
    assert all("per_prompt" in setups[n] for n in calibrate.LLAMACPP_SETUPS)
    assert all(setups[n]["error"] == calibrate.NATIVE_TORCH_SETUP for n in calibrate.TORCH_SETUPS)
    assert calibrate.resolve_class("auto", cal) == "cross-engine"
    assert cal["cost"]["prompts"] == 2 and cal["cost"]["seconds"] >= 0
    path = calibrate.cache_path(ref)
    assert path.is_file() and path.parent == tmp_path / "home" / "calibrations" and path.name.endswith(".llamacpp.json")
    err = capsys.readouterr().err
    assert "calibrating the honest noise" in err and "set-up llamacpp-t1 measured" in err and str(path) in err
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: pytest.fail("measured again despite the cache"))
    assert calibrate.first_use(ref, prompts, 8, 5, calibrate.SETUPS) == cal


def test_simulate_serves_a_gguf_with_llamacpp_and_the_audit_calls_it_consistent(gguf, tmp_path):
    with provider(gguf, "--reference-runtime", "llamacpp", "--served-name", "smollm2-135m") as (url, _srv):
        rep = _audit(url, gguf, tmp_path / "sim", budget=8, max_tokens=32)
    assert rep["verdict"] == "consistent", rep["reasons"]
    assert rep["honest_class"]["name"] == "cross-engine"


def test_simulate_refuses_substitutes_on_llamacpp(gguf, capsys):
    from support.cli import run as run_cli

    code, out, err = run_cli(capsys, "audit", "simulate", "--reference", gguf, "--reference-runtime", "llamacpp",
                             "--substitute", "q4")
    assert code == 2 and "substitutes transform torch weights" in out + err


def test_honest_torch_provider_is_not_substituted_against_the_llamacpp_reference(gguf, tmp_path):
    # the committed calibration measured llama.cpp against torch; scored the other way round it still holds
    with provider("smollm2-135m") as (url, _srv):
        rep = _audit(url, gguf, tmp_path / "torch")
    assert rep["verdict"] != "substituted", rep["reasons"]
    assert not any(rep["rejected"].values())
