"""Several providers in one report, the cost budget, and the CI verdict JSON / exit codes."""

from __future__ import annotations

import json

import pytest
from support.audit_loopback import loopback
from support.audit_providers import make_audit_model_dir
from support.cli import run

from specguard.audit import calibrate
from specguard.audit.multi import Budget, plan_prompts
from specguard.audit.run import AuditConfig, load_prompts, run_audit
from specguard.audit.simulate import build_app
from specguard.models import load_model

TOKENS = 10
ENTRY_KEYS = {"name", "base_url", "model", "verdict", "exit_code", "reasons", "rejected", "tests", "prompts", "tokens",
              "report"}
TEST_KEYS = {"name", "statistic", "p_value", "samples", "mde", "declared_effect", "powered"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("multi")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    ref = load_model(str(ref_dir))
    other = load_model(str(make_audit_model_dir(base / "other", seed=1)))
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: tell me about topic number {i}."}) + "\n"
                               for i in range(8)))
    ids = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(str(prompts), 4)]
    cal = base / "calibration.json"
    calibrate.save(calibrate.calibrate(ref, ids, TOKENS, 5, setups=calibrate.HONEST_CLASSES["fp32"]), cal)
    with loopback(build_app(ref)) as good, loopback(build_app(other, served_name="claimed")) as bad:
        yield {"base": base, "ref_dir": ref_dir, "ref": ref, "prompts": prompts, "cal": cal, "good": good, "bad": bad}


def _args(env, out, *extra):
    return ["audit", "run", "--model", "claimed", "--reference", str(env["ref_dir"]), "--prompts", str(env["prompts"]),
            "--max-tokens", str(TOKENS), "--honest-class", "fp32", "--calibration", str(env["cal"]),
            "--min-effect-tokens", "0.5", "--timeout", "30", "--max-retries", "1", "--out", str(env["base"] / out),
            *extra]


def _check_schema(doc):
    assert doc["format"] == "specguard-audit-verdict/v1"
    assert set(doc) == {"format", "verdict", "exit_code", "alpha", "providers", "budget"}
    for entry in doc["providers"]:
        assert set(entry) == ENTRY_KEYS
        assert all(set(t) == TEST_KEYS for t in entry["tests"])


def test_two_providers_one_report_two_verdicts(env, capsys):
    code, out, _err = run(capsys, *_args(env, "two", "--provider", f"good={env['good']}", "--provider",
                                         f"bad={env['bad']}", "--budget", "3", "--seeded", "2", "--json"))
    doc = json.loads(out)
    _check_schema(doc)
    assert code == 4 and doc["exit_code"] == 4 and doc["verdict"] == "substituted"
    verdicts = {e["name"]: e["verdict"] for e in doc["providers"]}
    assert verdicts == {"good": "consistent", "bad": "substituted"}, [e["reasons"] for e in doc["providers"]]
    bad = next(e for e in doc["providers"] if e["name"] == "bad")
    assert bad["rejected"]["token_agreement"] and bad["rejected"]["seeded_exact"]
    for name in ("good", "bad"):
        rep = json.loads((env["base"] / "two" / name / "report.json").read_text())
        assert rep["prompts"]["requested"] == 3
        assert [p["prompt"] for p in rep["per_prompt"]] == load_prompts(str(env["prompts"]), 3)  # the same prompts
    combined = json.loads((env["base"] / "two" / "report.json").read_text())
    assert combined["format"] == "specguard-audit-multi-report/v1" and len(combined["providers"]) == 2
    html = (env["base"] / "two" / "report.html").read_text()
    assert html.count("<svg") == 6 and "good" in html and "bad" in html


def test_cost_budget_limits_prompts_and_says_so(env, capsys):
    cfg = AuditConfig(base_url="", model="claimed", reference="", budget=4, max_tokens=TOKENS)
    tokens = [len(env["ref"].encode_chat([{"role": "user", "content": p}])) for p in load_prompts(str(env["prompts"]), 4)]
    _n, two = plan_prompts(AuditConfig(**{**cfg.__dict__, "budget": 2}), tokens, [2.0, 1.0], float("inf"))
    code, out, _err = run(capsys, *_args(env, "budget", "--provider", f"good={env['good']}", "--provider",
                                         f"bad={env['bad']}", "--budget", "4", "--max-cost", f"{two * 1.01:.9f}",
                                         "--price-per-1k-tokens", "1.0", "--price-per-1k-tokens", "good=2.0", "--json"))
    doc = json.loads(out)
    _check_schema(doc)
    budget = doc["budget"]
    assert budget["planned_prompts"] == 2 and budget["requested_prompts"] == 4
    assert "asked 2 of 4 prompts" in budget["reason"]
    assert 0 < budget["spent"] <= budget["max_cost"]
    assert budget["per_provider"]["good"]["price_per_1k_tokens"] == 2.0
    assert all(e["prompts"]["requested"] == 2 for e in doc["providers"])
    assert code == 4


def test_budget_guard_refuses_queries_that_could_exceed_it(env):
    """Half the money already gone (another provider): the run sends what fits, then stops and says so."""
    shared = Budget(max_cost=1.0)
    body = {"messages": [{"role": "user", "content": load_prompts(str(env["prompts"]), 1)[0]}], "max_tokens": TOKENS}
    from specguard.audit.multi import worst_case_tokens

    per_query = worst_case_tokens(env["ref"], body) / 1000.0  # price 1 per 1k tokens
    shared.spent = 1.0 - 1.5 * per_query  # room for one worst-case query, not two
    pb = shared.for_provider("solo", 1.0, env["ref"])
    cfg = AuditConfig(base_url=env["good"], model="claimed", reference=str(env["ref_dir"]),
                      prompts_file=str(env["prompts"]), budget=3, max_tokens=TOKENS, honest_class="fp32",
                      calibration=str(env["cal"]), min_effect_tokens=0.5, timeout=30, max_retries=1)
    rep = run_audit(cfg, env["base"] / "guard", reference=env["ref"], budget=pb)
    problems = [p["problem"] for p in rep["per_prompt"]]
    assert problems[0] is None and problems[1:] == ["not sent: cost budget exhausted"] * 2
    assert shared.spent <= shared.max_cost and shared.refused == 2
    assert any("stopped before exceeding the cost budget: 2 queries not sent" in r for r in rep["reasons"])
    assert rep["budget"]["refused"] == 2
    # a provider reporting no (or absurd) usage is charged the worst case
    pb.charge(body, {"usage": {"total_tokens": -5}})
    assert pb.shared.per_provider["solo"]["tokens"] >= 2 * worst_case_tokens(env["ref"], body) - 10


def test_exit_codes_and_json_single_provider(env, capsys):
    code, out, _ = run(capsys, *_args(env, "single", "--base-url", env["good"], "--budget", "2", "--json"))
    doc = json.loads(out)
    _check_schema(doc)
    assert code == 0 and doc["verdict"] == "consistent" and doc["providers"][0]["name"] == "provider"
    # too few tokens for the declared effect: inconclusive, exit 1
    code, out, _ = run(capsys, *_args(env, "weak", "--base-url", env["good"], "--budget", "1", "--json",
                                      "--min-effect-tokens", "0.01"))
    assert code == 1 and json.loads(out)["verdict"] == "inconclusive"
    # usage errors: exit 2, nothing on stdout
    for extra in ((), ("--base-url", env["good"], "--provider", f"a={env['good']}"),
                  ("--provider", f"../up={env['good']}"), ("--provider", f"a={env['good']}", "--max-cost", "1"),
                  ("--provider", f"a={env['good']}", "--provider", f"a={env['bad']}")):
        code, out, err = run(capsys, *_args(env, "usage", *extra))
        assert code == 2 and out == "" and "Error" in err, extra
