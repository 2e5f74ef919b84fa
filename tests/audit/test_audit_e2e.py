"""End to end: `specguard audit` against simulated providers on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from support.audit_providers import make_audit_model_dir, provider

from specguard.audit import calibrate
from specguard.audit.run import AuditConfig, load_prompts, run_audit
from specguard.models import load_model

BUDGET, TOKENS = 4, 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    other_dir = make_audit_model_dir(base / "other", seed=1)
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: tell me about topic number {i}."}) + "\n"
                               for i in range(16)))
    ref = load_model(str(ref_dir))
    ids = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(str(prompts), 8)]
    cal = calibrate.calibrate(ref, ids, TOKENS, 5, setups=calibrate.HONEST_CLASSES["fp32"])
    cal_path = base / "calibration.json"
    calibrate.save(cal, cal_path)
    return {"ref_dir": ref_dir, "other_dir": other_dir, "prompts": prompts, "ref": ref, "cal": cal_path, "base": base}


def _config(setup, url, **kw):
    args = dict(base_url=url, model="claimed", reference=str(setup["ref_dir"]), prompts_file=str(setup["prompts"]),
                budget=BUDGET, max_tokens=TOKENS, honest_class="fp32", calibration=str(setup["cal"]),
                min_effect_tokens=0.5, timeout=20, max_retries=4)
    args.update(kw)
    return AuditConfig(**args)


def _audit(setup, url, name, **kw):
    return run_audit(_config(setup, url, **kw), setup["base"] / name, reference=setup["ref"])


@pytest.fixture(scope="module")
def honest(setup):
    """The reference itself, served with a different thread count (and, by construction, other matrix shapes)."""
    with provider(setup["ref_dir"], "--threads", "1") as (url, _srv):
        yield url


def test_honest_provider_is_consistent_with_and_without_logprobs(setup, honest):
    with_lp = _audit(setup, honest, "honest")
    text = _audit(setup, honest, "honest-text", request_logprobs=False)
    assert with_lp["verdict"] == "consistent", with_lp["reasons"]
    assert {t["name"] for t in with_lp["tests"]} == {"token_agreement", "logprob"}
    assert text["verdict"] == "consistent", text["reasons"]
    assert {t["name"] for t in text["tests"]} == {"token_agreement"}
    for rep in (with_lp, text):
        assert all(t["p_value"] > 0.01 and t["powered"] for t in rep["tests"])
    html = (setup["base"] / "honest" / "report.html").read_text()
    assert "<svg" in html and "consistent" in html


@pytest.mark.parametrize("flags", [("--substitute", "q4"), ("--substitute", "prune:2"), ("other-model",)],
                         ids=["q4", "prune2", "other-model"])
def test_substitutes_are_detected_with_and_without_logprobs(setup, flags):
    model_dir = setup["other_dir"] if flags == ("other-model",) else setup["ref_dir"]
    extra = () if flags == ("other-model",) else flags
    name = flags[-1].replace(":", "")
    with provider(model_dir, *extra) as (url, _srv):
        with_lp = _audit(setup, url, f"sub-{name}")
        text = _audit(setup, url, f"sub-{name}-text", request_logprobs=False)
    assert with_lp["verdict"] == "substituted", with_lp["reasons"]
    assert with_lp["rejected"]["token_agreement"] and with_lp["rejected"]["logprob"]
    assert text["verdict"] == "substituted", text["reasons"]
    assert text["rejected"]["token_agreement"]


def test_storms_malformed_answers_and_unmappable_tokens(setup):
    flags = ("--fail-rate", "0.4", "--retry-after", "0", "--malformed-rate", "0.2", "--unmappable-rate", "0.05",
             "--fault-seed", "7")
    with provider(setup["ref_dir"], *flags) as (url, _srv):
        rep = _audit(setup, url, "stormy", max_retries=12)
    raw = (setup["base"] / "stormy" / "raw.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in raw]
    assert rep["client"]["retries"] > 0 and rep["client"]["http_errors"]
    assert any(r["status"] in (429, 500) and r["retry_after"] == "0" for r in records)
    assert rep["prompts"]["answered"] == BUDGET
    assert rep["tokens"]["unmappable_or_unscored"] > 0
    assert any(p.get("unmappable_reasons") for p in rep["per_prompt"])
    assert rep["verdict"] in ("consistent", "inconclusive")  # honest model: never "substituted"


def test_missing_logprobs_ignored_seed_and_timeouts(setup):
    with provider(setup["ref_dir"], "--no-logprobs", "--ignore-seed", "--slow", "1") as (url, _srv):
        rep = _audit(setup, url, "nolp", mmd_samples=3, mmd_prompts=2)
        slow = _audit(setup, url, "slow", budget=1, timeout=0.3, max_retries=1)
    assert rep["prompts"]["with_logprobs"] == 0
    assert [t["name"] for t in rep["tests"]] == ["token_agreement", "mmd"]
    assert rep["tests"][1]["samples"] == 12 and rep["tests"][1]["p_value"] > 0.01
    assert rep["verdict"] == "consistent", rep["reasons"]
    assert slow["verdict"] == "inconclusive"
    assert slow["per_prompt"][0]["problem"] == "no answer after retries"
    lines = (setup["base"] / "slow" / "raw.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("Timeout" in json.loads(x)["error"] for x in lines)


def test_resume_after_interruption_matches_uninterrupted_run(setup, honest):
    from specguard.cli import _register_plugin_commands, cli

    full = _audit(setup, honest, "full")
    part = setup["base"] / "part"
    part.mkdir()
    lines = (setup["base"] / "full" / "raw.jsonl").read_text().splitlines(keepends=True)
    # an interrupted run: two answers logged, then a write cut mid-line
    (part / "raw.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    resumed = _audit(setup, honest, "part")
    assert resumed["verdict"] == full["verdict"]
    assert [t["statistic"] for t in resumed["tests"]] == [t["statistic"] for t in full["tests"]]
    assert resumed["client"]["reused"] == 2
    # offline re-analysis through the CLI reads only the log
    _register_plugin_commands()
    copy = setup["base"] / "copy"
    shutil.copytree(setup["base"] / "full", copy)
    result = CliRunner().invoke(cli, ["audit", "report", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == full["verdict"]
    assert json.loads((copy / "report.json").read_text())["client"]["attempts"] == 0


def test_api_key_is_sent_but_never_written(setup, honest, monkeypatch):
    monkeypatch.setenv("AUDIT_TEST_KEY", "sk-very-secret-123")
    rep = _audit(setup, honest, "keyed", budget=1, api_key_env="AUDIT_TEST_KEY")
    assert rep["prompts"]["answered"] == 1
    for path in (setup["base"] / "keyed").iterdir():
        assert "sk-very-secret-123" not in path.read_text()


def test_model_dir_is_reused(tmp_path):
    first = make_audit_model_dir(tmp_path / "m", seed=3)
    mtime = (first / "config.json").stat().st_mtime_ns
    assert make_audit_model_dir(tmp_path / "m", seed=3) == first
    assert (first / "config.json").stat().st_mtime_ns == mtime
