"""Sampled audits: the seeded-exact test and the rank-based uniformity test (RUT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.audit_loopback import loopback
from support.audit_providers import make_audit_model_dir

from specguard.audit import calibrate
from specguard.audit.run import AuditConfig, load_prompts, run_audit
from specguard.audit.sampled import (
    SEEDED_TAG,
    answer_ids,
    check_seeded_ids,
    check_seeded_text,
    cvm_pvalue,
    derive_seed,
    loglik,
    reference_samples,
    rut_rank,
    rut_test,
    seeded_exact_test,
    seeded_params,
)
from specguard.audit.simulate import Misbehaviour, build_app
from specguard.audit.substitutes import apply_substitute, parse_substitute
from specguard.engine.speculative import SpeculativeEngine
from specguard.models import load_model

TOKENS = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("sampled")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    ref = load_model(str(ref_dir))
    other = load_model(str(make_audit_model_dir(base / "other", seed=1)))
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: tell me about topic number {i}."}) + "\n"
                               for i in range(16)))
    return {"ref": ref, "ref_dir": ref_dir, "other": other, "q4": apply_substitute(ref, parse_substitute("q4")),
            "prompts": prompts, "base": base}


def _prompt(ref, i):
    return ref.encode_chat([{"role": "user", "content": f"Question {i}: tell me about topic number {i}."}])


def _seeded_answer(model, ref, pids, params):
    """What a provider serving `model` with specguard's seeded sampling returns: ids (EOS stripped), stopped, text."""
    ids = list(SpeculativeEngine(model).generate(pids, params).output_ids)
    stopped = bool(ids) and ids[-1] in ref.eos_token_ids
    ids = ids[:-1] if stopped else ids
    return ids, stopped, ref.tokenizer.decode(ids, skip_special_tokens=False)


def _checks(models, served, seed_of, by_text=False):
    ref = models["ref"]
    out = []
    for i in range(3):
        pids = _prompt(ref, i)
        asked = seeded_params(TOKENS, 1.0, 1.0, 0, derive_seed(0, SEEDED_TAG, i))
        served_params = seeded_params(TOKENS, 1.0, 1.0, 0, seed_of(i))
        ids, stopped, text = _seeded_answer(served, ref, pids, served_params)
        out.append(check_seeded_text(ref, pids, text, asked, 1e-3) if by_text
                   else check_seeded_ids(ref, pids, ids, asked, stopped, 1e-3))
    return out


@pytest.mark.parametrize("by_text", [False, True], ids=["token-ids", "text-only"])
def test_seeded_exact_honest_passes_substitutes_and_seed_ignorers_fail(models, by_text):
    same_seed = lambda i: derive_seed(0, SEEDED_TAG, i)  # noqa: E731
    honest = seeded_exact_test(_checks(models, models["ref"], same_seed, by_text), 0.01, 0.05)
    assert honest.p_value == 1.0 and honest.details["hard_mismatches"] == 0 and honest.samples > 0
    for name in ("q4", "other"):
        res = seeded_exact_test(_checks(models, models[name], same_seed, by_text), 0.01, 0.05)
        assert res.p_value == 0.0 and res.details["hard_mismatches"] >= 1, name
    # the right weights, but the seed ignored (another seed drawn): not specguard's seeded sampling
    ignored = seeded_exact_test(_checks(models, models["ref"], lambda i: 777 + i, by_text), 0.01, 0.05)
    assert ignored.p_value == 0.0


def test_seeded_exact_power_figure():
    from specguard.audit.sampled import SeededCheck

    res = seeded_exact_test([SeededCheck(positions=64, agree=64)], 0.01, 0.05)
    assert res.mde == pytest.approx(1 - 0.05 ** (1 / 64)) and res.powered and res.p_value == 1.0
    few = seeded_exact_test([SeededCheck(positions=10, agree=10)], 0.01, 0.05)
    assert not few.powered  # 10 positions cannot show a 5% change with 95% power
    near = seeded_exact_test([SeededCheck(positions=10, agree=9, near=1)], 0.01, 0.05)
    assert near.p_value == 1.0 and near.details["near_ties"] == 1  # near-ties never reject


def test_cvm_statistic_matches_closed_form_and_separates():
    rng = np.random.default_rng(3)
    u = rng.random(25)
    s = np.sort(u)
    n = len(u)
    w2 = 1 / (12 * n) + float(np.sum(((2 * np.arange(1, n + 1) - 1) / (2 * n) - s) ** 2))
    stat, p = cvm_pvalue(list(u))
    assert stat == pytest.approx(w2, rel=1e-9) and p > 0.01
    assert cvm_pvalue([0.01] * 10)[1] < 1e-3
    assert cvm_pvalue([])[1] == 1.0


def test_rut_ranks_are_uniform_under_exchangeability_and_false_alarms_bounded():
    """Provider and reference statistics from the same (discrete, tie-heavy) law: ranks uniform, ~alpha rejections."""
    rng = np.random.default_rng(0)
    rejections = 0
    trials = 300
    for _ in range(trials):
        us = [rut_rank(float(rng.integers(0, 4)), [float(x) for x in rng.integers(0, 4, 9)], rng) for _ in range(12)]
        rejections += cvm_pvalue(us)[1] <= 0.01
    assert rejections / trials <= 0.03
    shifted = [rut_rank(-1.0, [float(x) for x in rng.integers(0, 4, 9)], rng) for _ in range(12)]
    assert all(u < 0.1 for u in shifted) and cvm_pvalue(shifted)[1] < 0.01


def _ranks(models, served, n, m, temperature=0.1, tokens=6):
    """RUT ranks of `served`'s sampled answers among m reference samples (a low temperature: the tiny
    random models are near-uniform at temperature 1, where even a different model looks alike)."""
    ref = models["ref"]
    rng = np.random.default_rng(1)
    us = []
    for i in range(n):
        pids = _prompt(ref, i)
        (text, stopped), = reference_samples(served, pids, 1, tokens, temperature, 1.0, derive_seed(9, "provider", i))
        samples = reference_samples(ref, pids, m, tokens, temperature, 1.0, derive_seed(9, "reference", i))
        lls = loglik(ref, pids, [answer_ids(ref, text, stopped)] + [answer_ids(ref, t, s) for t, s in samples])
        us.append(rut_rank(lls[0], lls[1:], rng))
    return us


def test_rut_accepts_honest_and_rejects_a_different_model(models):
    honest = rut_test(_ranks(models, models["ref"], 8, 7), 7, 0.01)
    other = rut_test(_ranks(models, models["other"], 8, 7), 7, 0.01)
    assert honest.p_value > 0.01, honest.details["ranks"]
    assert other.p_value < 0.01, other.details["ranks"]
    assert other.mde is not None and 0 < other.mde <= 1 and other.declared_effect is None


@pytest.fixture(scope="module")
def calibration(models):
    ref = models["ref"]
    ids = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(str(models["prompts"]), 4)]
    cal = calibrate.calibrate(ref, ids, TOKENS, 5, setups=calibrate.HONEST_CLASSES["fp32"])
    path = models["base"] / "calibration.json"
    calibrate.save(cal, path)
    return path


def _audit(models, calibration, url, name, **kw):
    cfg = AuditConfig(base_url=url, model="claimed", reference=str(models["ref_dir"]), prompts_file=str(models["prompts"]),
                      budget=3, max_tokens=TOKENS, honest_class="fp32", calibration=str(calibration),
                      min_effect_tokens=0.5, timeout=30, max_retries=2, seeded_prompts=3, rut_prompts=3, rut_samples=5,
                      **kw)
    return run_audit(cfg, models["base"] / name, reference=models["ref"])


def test_sampled_tests_join_the_verdict_against_loopback_providers(models, calibration):
    with loopback(build_app(models["ref"])) as url:
        honest = _audit(models, calibration, url, "honest")
    with loopback(build_app(models["ref"], misbehave=Misbehaviour(ignore_seed=True))) as url:
        ignorer = _audit(models, calibration, url, "ignorer", request_logprobs=False)
    names = [t["name"] for t in honest["tests"]]
    assert names == ["token_agreement", "logprob", "seeded_exact", "rut"]
    assert honest["verdict"] == "consistent", honest["reasons"]
    seeded = honest["tests"][2]
    assert seeded["p_value"] == 1.0 and seeded["mde"] is not None and seeded["samples"] > 0
    assert honest["sampled"]["seeded_exact"]["queries"][0]["seed"] == derive_seed(0, SEEDED_TAG, 0)
    # same weights, seed ignored: the seeded-exact test (and so the verdict) rejects
    assert ignorer["rejected"]["seeded_exact"] and ignorer["verdict"] == "substituted"
    assert not ignorer["rejected"]["token_agreement"]
    html = (models["base"] / "honest" / "report.html").read_text()
    assert "seeded_exact" in html and "rut" in html
