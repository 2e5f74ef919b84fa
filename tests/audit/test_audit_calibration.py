"""Honest classes across engines, verdict claims, repetition-penalty positions, token budgets and
the legacy completions endpoint (tiny models and simulated providers; no default model)."""

from __future__ import annotations

import json

import pytest
from support.audit_providers import make_audit_model_dir, provider

from specguard.audit import AuditUsageError, calibrate
from specguard.audit.client import ProviderFault, validate_completion
from specguard.audit.rescore import PositionScore
from specguard.audit.run import AuditConfig, _penalty_adjusted, _power_by_tokens, load_prompts, run_audit
from specguard.audit.statistics import combine
from specguard.audit.tokens import TokenMap, map_logprob_content
from specguard.models import load_model


def _setup(mean: float, margins: list[float], positions: int = 200) -> dict:
    return {"per_prompt": [mean] * 8, "positions": positions, "disagreement_margins": margins, "mean_abs_delta": mean}


def _cal(with_llama: bool) -> dict:
    setups = {"fp32-threads": _setup(1e-6, []), "fp32-batch": _setup(1e-6, []), "fp16": _setup(0.007, []),
              "bf16": _setup(0.05, [0.1, 0.17])}
    for name in calibrate.LLAMACPP_SETUPS:
        setups[name] = _setup(0.09, [0.2, 0.6]) if with_llama else {"error": "no GGUF"}
    return {"format": calibrate.FORMAT, "reference": {"name": "x", "digest": "d"}, "max_tokens": 32, "top_k": 5,
            "prompts": 8, "setups": setups}


def test_auto_class_is_cross_engine_only_when_another_engine_was_calibrated():
    both, torch_only = _cal(True), _cal(False)
    assert calibrate.resolve_class("auto", both) == "cross-engine"
    with pytest.raises(AuditUsageError, match="honest llama.cpp or vLLM") as err:
        calibrate.resolve_class("auto", torch_only)  # never a silent torch-only fallback
    assert err.value.field == "honest_class"
    cross = calibrate.honest_null(both, "auto")
    assert cross["class"] == "cross-engine" and cross["worst_setup"].startswith("llamacpp")
    assert cross["tau"] == pytest.approx(1.5 * 0.6) and cross["pool"][0] == pytest.approx(1.5 * 0.09)
    assert cross["claim"].startswith("consistent with the claimed weights on some honest engine")
    same = calibrate.honest_null(both, "fp32")
    assert same["setups"] == ["fp32-threads", "fp32-batch"] and "identical implementation" in same["claim"]
    with pytest.raises(AuditUsageError):
        calibrate.honest_null(torch_only, "auto")
    assert calibrate.honest_null(torch_only, "bf16")["class"] == "bf16"  # an explicit choice still works
    with pytest.raises(AuditUsageError) as err:
        calibrate.honest_null(torch_only, "cross-engine")
    assert err.value.field == "setups"
    with pytest.raises(AuditUsageError):
        calibrate.honest_null(both, "fp64")


def test_verdict_states_its_claim():
    from specguard.audit.statistics import TestResult

    ok = TestResult("token_agreement", 0.0, 0.9, 500, 0.01, 0.05)
    bad = TestResult("token_agreement", 0.3, 1e-9, 500, 0.01, 0.05)
    claim = calibrate.CLAIMS["cross-engine"]
    good = combine([ok], 0.01, 0.0, claim=claim)
    assert good["verdict"] == "consistent" and any(claim in r for r in good["reasons"])
    sub = combine([bad], 0.01, 0.0, claim=claim)
    assert sub["verdict"] == "substituted" and any("outside the noise" in r for r in sub["reasons"])


def _pos(token: int, expected: int) -> PositionScore:
    return PositionScore(token_id=token, logprob=-1.0, expected_id=expected, margin=2.0, top=[])


def test_penalty_adjusted_positions_need_the_providers_own_ranking_and_an_earlier_occurrence():
    prompt = [5, 6, 7]
    ids = [10, 11, 12, 13]
    scores = [_pos(10, 10), _pos(11, 6), _pos(12, 99), _pos(13, 6)]
    lps = [-0.1, -0.9, -0.9, -0.5]
    tops = [{10: -0.1}, {6: -0.5, 11: -0.9}, {99: -0.5, 12: -0.9}, {6: -0.7, 13: -0.5}]
    # 1: provider ranks the reference's earlier-seen choice (6) above its pick -> a repetition penalty
    # 2: the reference's choice (99) never occurred before -> a real disagreement
    # 3: the provider's own logprobs say its pick was its argmax -> a real disagreement
    assert _penalty_adjusted(prompt, ids, lps, tops, scores) == {1}
    assert _penalty_adjusted([], ids, lps, tops, scores) == set()


def test_power_by_token_budget_grows_with_the_budget():
    by_position = [(p, True, 5.0) for _ in range(6) for p in range(64)]
    cfg = AuditConfig(base_url="x", model="m", reference="r", max_tokens=64)
    rows = _power_by_tokens(by_position, cfg, {"tau": 0.1, "p0": 0.01})
    assert [r["max_tokens"] for r in rows] == [8, 16, 32, 64]
    assert [r["decisive_positions"] for r in rows] == [48, 96, 192, 384]
    mdes = [r["mde"] for r in rows if r["mde"] is not None]
    assert mdes == sorted(mdes, reverse=True) and rows[-1]["powered"]


def test_validate_completion_converts_legacy_logprobs_and_names_faults():
    req = {"prompt": "hi", "max_tokens": 4, "logprobs": 2}
    ans = {"choices": [{"text": "ab", "finish_reason": "length", "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"a": -0.1, "c": -2.0}, {"b": -0.2}],
        "text_offset": [0, 1]}}]}
    got = validate_completion(ans, req)
    assert got.content == "ab" and got.finish_reason == "length"
    assert got.logprobs[0]["top_logprobs"][1] == {"token": "c", "bytes": None, "logprob": -2.0}
    assert validate_completion(ans, {**req, "logprobs": 0}).logprobs is None
    for broken, field in [
        ({"choices": [{"text": 3}]}, "choices[0].text"),
        ({"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": []}}]}, "choices[0].logprobs.tokens"),
        ({"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [float("nan")]}}]},
         "choices[0].logprobs.tokens[0].logprob"),
        ({"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-1.0],
                                                 "top_logprobs": [{"a": -1.0, "b": -2.0, "c": -3.0}]}}]},
         "choices[0].logprobs.top_logprobs[0]"),
    ]:
        with pytest.raises(ProviderFault) as err:
            validate_completion(broken, req)
        assert err.value.field == field


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit-cal")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    return {"dir": ref_dir, "ref": load_model(str(ref_dir)), "base": base}


def test_usage_errors_for_context_endpoint_and_reserved_fields(tiny):
    def run(**kw):
        args = dict(base_url="http://127.0.0.1:9/v1", model="m", reference=str(tiny["dir"]), budget=1)
        args.update(kw)
        return run_audit(AuditConfig(**args), tiny["base"] / "bad", reference=tiny["ref"])

    with pytest.raises(AuditUsageError) as err:
        run(max_tokens=tiny["ref"].max_context)
    assert err.value.field == "max_tokens"
    with pytest.raises(AuditUsageError) as err:
        run(endpoint="embeddings")
    assert err.value.field == "endpoint"
    with pytest.raises(AuditUsageError) as err:
        run(extra_body={"temperature": 1.0})
    assert err.value.field == "extra_body"
    with pytest.raises(AuditUsageError) as err:
        run(honest_class="fp64")
    assert err.value.field == "honest_class"


def test_calibration_without_a_gguf_records_llamacpp_as_unavailable(tiny):
    ids = [tiny["ref"].encode_chat([{"role": "user", "content": p}]) for p in load_prompts(None, 2)]
    cal = calibrate.calibrate(tiny["ref"], ids, 4, 5, setups=("fp32-threads", "llamacpp-t1"))
    assert "per_prompt" in cal["setups"]["fp32-threads"]
    assert "GGUF" in cal["setups"]["llamacpp-t1"]["error"]
    with pytest.raises(AuditUsageError):
        calibrate.resolve_class("auto", cal)


def test_a_reference_without_a_calibration_never_falls_back_to_a_torch_only_class(tiny, capsys):
    """Issue 21: `audit run --reference OTHER` (no committed calibration, no GGUF) used to calibrate torch
    only and silently audit against bf16, which calls an honest llama.cpp or vLLM provider substituted."""
    from support.audit_loopback import loopback
    from support.cli import run as run_cli

    from specguard.audit.simulate import build_app

    prompts = tiny["base"] / "auto-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(2)))
    torch_only = tiny["base"] / "torch-only.json"
    ids = [tiny["ref"].encode_chat([{"role": "user", "content": p}]) for p in load_prompts(str(prompts), 2)]
    calibrate.save(calibrate.calibrate(tiny["ref"], ids, 4, 5, setups=("fp32-threads",)), torch_only)
    with loopback(build_app(tiny["ref"])) as url:
        for name, extra in (("auto-none", []), ("auto-file", ["--calibration", str(torch_only)])):
            out = tiny["base"] / name
            code, stdout, err = run_cli(capsys, "audit", "run", "--base-url", url, "--model", "claimed",
                                        "--reference", str(tiny["dir"]), "--prompts", str(prompts), "--budget", "2",
                                        "--max-tokens", "4", "--out", str(out), *extra)
            assert code == 2, stdout + err
            assert "honest llama.cpp or vLLM provider substituted" in err and "--honest-class bf16" in err
            assert not (out / "raw.jsonl").exists(), "refused before any query"
        code, stdout, err = run_cli(capsys, "audit", "run", "--base-url", url, "--model", "claimed",
                                    "--reference", str(tiny["dir"]), "--prompts", str(prompts), "--budget", "2",
                                    "--max-tokens", "4", "--out", str(tiny["base"] / "explicit"),
                                    "--calibration", str(torch_only), "--honest-class", "fp32",
                                    "--min-effect-tokens", "0.9")
    assert code in (0, 1), stdout + err  # an explicit torch-only class is the auditor's informed choice
    assert json.loads((tiny["base"] / "explicit" / "report.json").read_text())["honest_class"]["name"] == "fp32"


def test_completions_endpoint_end_to_end_with_the_simulator(tiny):
    prompts = tiny["base"] / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Once upon a time, story number {i}"}) + "\n" for i in range(4)))
    common = dict(model="claimed", reference=str(tiny["dir"]), prompts_file=str(prompts), budget=4, max_tokens=16,
                  honest_class="fp32", endpoint="completions", min_effect_tokens=0.5, timeout=20, max_retries=3)
    with provider(tiny["dir"], "--threads", "1") as (url, _srv):
        honest = run_audit(AuditConfig(base_url=url, **common), tiny["base"] / "cmpl-honest", reference=tiny["ref"])
    with provider(tiny["dir"], "--substitute", "q4") as (url, _srv):
        sub = run_audit(AuditConfig(base_url=url, **common), tiny["base"] / "cmpl-q4", reference=tiny["ref"])
    raw = json.loads((tiny["base"] / "cmpl-honest" / "raw.jsonl").read_text().splitlines()[0])
    assert raw["request"]["prompt"].startswith("Once upon a time") and raw["request"]["logprobs"] == 5
    assert "messages" not in raw["request"]
    assert honest["endpoint"] == "completions" and honest["prompts"]["with_logprobs"] == 4
    assert honest["verdict"] == "consistent", honest["reasons"]
    assert honest["power_by_max_tokens"][-1]["max_tokens"] == 16
    assert sub["verdict"] == "substituted", sub["reasons"]
    # the legacy shape maps through the same exact token map (text, no bytes)
    tmap = TokenMap(tiny["ref"].tokenizer, tiny["ref"].vocab_size)
    body = json.loads(raw["body"])
    entries = validate_completion(body, raw["request"]).logprobs
    assert map_logprob_content(entries, tmap).total == len(entries)
