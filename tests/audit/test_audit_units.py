"""Unit tests of the audit: statistics, token mapping, client retries and log, substitutes, calibration."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import tiny_model

from specguard.audit import AuditUsageError, calibrate
from specguard.audit.client import ClientOptions, ProviderClient, load_raw_log
from specguard.audit.rescore import rescore
from specguard.audit.statistics import (
    TestResult,
    _binom_sf,
    agreement_test,
    combine,
    holm,
    logprob_test,
    mmd_test,
)
from specguard.audit.substitutes import apply_substitute, mixed_in, parse_substitute
from specguard.audit.tokens import TokenMap, map_logprob_content, retokenize_text
from specguard.engine.scoring import score

NO_WAIT = ClientOptions(sleep=lambda s: None)

# --- statistics --------------------------------------------------------------------------------


def test_binomial_tail_matches_direct_sum():
    from math import comb

    n, p = 30, 0.1
    for d in (0, 1, 5, 30):
        direct = sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(d, n + 1))
        assert _binom_sf(d, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-15)


def test_agreement_test_discounts_near_ties_and_reports_power():
    honest = agreement_test([1e-4, 2e-4], agree_count=200, tau=1e-3, p0=0.005, alpha=0.01, declared=0.1)
    assert honest.details["hard_disagreements"] == 0 and honest.details["near_tie_disagreements"] == 2
    assert honest.p_value == 1.0 and honest.powered
    cheat = agreement_test([0.5] * 30, agree_count=170, tau=1e-3, p0=0.005, alpha=0.01, declared=0.1)
    assert cheat.p_value < 1e-10 and cheat.statistic == pytest.approx(0.15)
    few = agreement_test([], agree_count=5, tau=1e-3, p0=0.005, alpha=0.01, declared=0.1)
    assert not few.powered  # 5 positions cannot show a 10% change at alpha=1%


def test_logprob_test_against_null_pool():
    pool = list(np.random.default_rng(1).uniform(0.0, 0.02, size=200))
    assert logprob_test([0.01, 0.012, 0.009], pool, 0.01, 0.1).p_value > 0.05
    res = logprob_test([0.3, 0.5, 0.4], pool, 0.01, 0.1)
    assert res.p_value < 0.001 and res.mde is not None and res.mde < 0.1 and res.powered


def test_mmd_separates_different_distributions_and_not_equal_ones():
    rng = np.random.default_rng(0)
    same = [([list(rng.integers(0, 3, 8)) for _ in range(8)], [list(rng.integers(0, 3, 8)) for _ in range(8)]) for _ in range(3)]
    diff = [([list(rng.integers(0, 3, 8)) for _ in range(8)], [list(rng.integers(5, 8, 8)) for _ in range(8)]) for _ in range(3)]
    assert mmd_test(same, 8, perms=200).p_value > 0.01
    assert mmd_test(diff, 8, perms=200).p_value < 0.01
    assert mmd_test([([[1]], [[1]])], 8).samples == 0


def _r(name, p, mde=0.01, declared=0.1):
    return TestResult(name, 0.0, p, 10, mde, declared)


def test_verdict_rules():
    assert holm([_r("a", 0.004), _r("b", 0.011)], 0.01) == {"a": True, "b": False}
    assert holm([_r("a", 0.006), _r("b", 0.007)], 0.01) == {"a": False, "b": False}
    assert holm([_r("a", 0.004), _r("b", 0.009)], 0.01) == {"a": True, "b": True}
    assert combine([_r("token_agreement", 0.5), _r("logprob", 0.5)], 0.01, 0.0)["verdict"] == "consistent"
    assert combine([_r("token_agreement", 0.5), _r("logprob", 1e-6)], 0.01, 0.0)["verdict"] == "substituted"
    # logprobs alone never make a provider consistent
    only_lp = combine([_r("logprob", 0.5)], 0.01, 0.0)
    assert only_lp["verdict"] == "inconclusive" and "token-agreement" in only_lp["reasons"][0]
    assert combine([_r("token_agreement", 0.5, mde=0.3)], 0.01, 0.0)["verdict"] == "inconclusive"
    assert combine([_r("token_agreement", 0.5)], 0.01, 0.2)["verdict"] == "inconclusive"


# --- token mapping -----------------------------------------------------------------------------


def test_token_mapping_exact_or_counted():
    m = tiny_model(seed=0)
    tmap = TokenMap(m.tokenizer, m.vocab_size)
    content = [
        {"token": "<3>", "logprob": -0.5, "bytes": list(b"<3>"), "top_logprobs": [{"token": "<4>", "logprob": -1.0}]},
        {"token": "token_id:7", "logprob": -0.1},
        {"token": "\ufffd", "logprob": -0.2},  # no bytes and a lossy text: not guessed
        {"token": "<9>", "logprob": -0.3},
    ]
    mapped = map_logprob_content(content, tmap)
    assert mapped.ids == [3, 7] and mapped.provider_top[0] == {4: -1.0}
    assert mapped.unmappable == 1 and mapped.unscored == 2 and mapped.total == 4
    assert map_logprob_content("garbage", tmap).total == 0
    assert tmap.lookup({"token": "token_id:999"})[0] is None
    assert tmap.lookup(["not", "a", "dict"])[0] is None


@settings(deadline=None, derandomize=True, max_examples=60)
@given(st.lists(st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), st.integers(), st.none(),
                                                                          st.lists(st.integers(-5, 300), max_size=4))),
                          st.integers(), st.text(max_size=5)), max_size=6))
def test_token_mapping_never_crashes_on_junk(content):
    m = tiny_model(seed=0)
    mapped = map_logprob_content(content, TokenMap(m.tokenizer, m.vocab_size))
    assert len(mapped.ids) + mapped.unscored == mapped.total


def test_retokenize_requires_round_trip():
    m = tiny_model(seed=0)
    assert retokenize_text("<1><2>", m).ids == [1, 2]
    bad = retokenize_text("free text", m)
    assert bad.ids == [] and bad.unmappable == 1


# --- client ------------------------------------------------------------------------------------


def _answer() -> dict:
    return {"choices": [{"message": {"content": "<1>"}, "finish_reason": "stop"}]}


def test_client_retries_honours_retry_after_and_logs_every_attempt(tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_VAR", "sk-secret-key")
    script = iter([
        httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
        httpx.Response(503, text="busy"),
        httpx.Response(200, text="{not json"),
        httpx.Response(200, json=_answer()),
    ])
    seen_auth = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_auth.append(request.headers.get("authorization"))
        return next(script)

    sleeps: list[float] = []
    log = tmp_path / "raw.jsonl"
    client = ProviderClient("http://provider/v1", "m", log_path=log, transport=httpx.MockTransport(handler),
                            options=ClientOptions(api_key_env="KEY_VAR", sleep=sleeps.append, max_backoff=10))
    assert client.chat({"messages": []}) == _answer()
    assert seen_auth == ["Bearer sk-secret-key"] * 4
    assert sleeps[0] >= 7 and len(sleeps) == 3
    lines = log.read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines] == [429, 503, 200, 200]
    assert "sk-secret-key" not in log.read_text()
    assert client.stats["http_errors"] == {"429": 1, "503": 1, "malformed": 1}
    # resume: the answer comes from the log, no request is made
    again = ProviderClient("http://provider/v1", "m", log_path=log, options=ClientOptions(sleep=sleeps.append),
                           transport=httpx.MockTransport(lambda r: pytest.fail("re-queried")))
    assert again.chat({"messages": []}) == _answer() and again.stats["reused"] == 1


def test_an_answer_logged_after_a_cut_line_survives_the_next_resume(tmp_path):
    """A run killed mid-write leaves a cut last line; the next answer must not be glued onto it."""
    log = tmp_path / "raw.jsonl"
    log.write_text('{"status": 200, "key": "cut-by-kill-9", "bo')  # no newline: the write was interrupted
    client = ProviderClient("http://provider/v1", "m", log_path=log, options=NO_WAIT,
                            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=_answer())))
    assert client.chat({"messages": []}) == _answer()
    again = ProviderClient("http://provider/v1", "m", log_path=log, options=NO_WAIT,
                           transport=httpx.MockTransport(lambda r: pytest.fail("re-queried")))
    assert again.chat({"messages": []}) == _answer() and again.stats["reused"] == 1


def test_prompts_are_never_repeated_to_fill_the_budget(tmp_path):
    """--budget beyond the distinct prompts must not count one answer as several independent samples."""
    from specguard.audit.run import DEFAULT_PROMPTS, load_prompts

    assert load_prompts(None, 24) == list(DEFAULT_PROMPTS)
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "a"}\n')
    assert load_prompts(str(f), 5) == ["a", "b"] and load_prompts(str(f), 1) == ["a"]


def test_client_gives_up_cleanly(tmp_path):
    def boom(request):
        raise httpx.ConnectTimeout("timed out")

    client = ProviderClient("http://p/v1", "m", log_path=tmp_path / "raw.jsonl", transport=httpx.MockTransport(boom),
                            options=ClientOptions(sleep=lambda s: None, max_retries=2))
    assert client.chat({"messages": []}) is None and client.stats["failures"] == 1
    assert len((tmp_path / "raw.jsonl").read_text().splitlines()) == 3
    bad = ProviderClient("http://p/v1", "m", log_path=tmp_path / "b.jsonl", options=NO_WAIT,
                         transport=httpx.MockTransport(lambda r: httpx.Response(400, text="no")))
    assert bad.chat({"messages": []}) is None and bad.stats["attempts"] == 1  # 400 is not retried
    with pytest.raises(AuditUsageError):
        ProviderClient("http://p/v1", "m", log_path=tmp_path / "c.jsonl",
                       options=ClientOptions(api_key_env="SURELY_UNSET_VAR_123"))
    (tmp_path / "d.jsonl").write_text('{"status": 200, "key": "k", "body": "[1]"}\nnot json\n')
    assert load_raw_log(tmp_path / "d.jsonl") == {}


# --- substitutes and scoring -------------------------------------------------------------------


def test_substitute_specs():
    assert parse_substitute("mix:q4:0.1").inner.kind == "q4"
    for bad in ("q5", "prune:0", "noise:-1", "mix:q4:2", "mix:mix:q4:0.1:0.2", "prune:x"):
        with pytest.raises(AuditUsageError):
            parse_substitute(bad)
    sub = parse_substitute("mix:q4:0.3")
    shares = [mixed_in(sub, f"r{i}") for i in range(400)]
    assert 0.2 < sum(shares) / 400 < 0.4 and shares == [mixed_in(sub, f"r{i}") for i in range(400)]


@pytest.mark.parametrize("spec", ["q8", "int8", "q4", "q3", "noise:0.01", "prune:2"])
def test_substitutes_change_a_copy_only(spec):
    ref = tiny_model(seed=2, layers=4)
    digest = ref.digest
    sub = apply_substitute(ref, parse_substitute(spec))
    assert ref.digest == digest and sub.digest != digest
    ids = torch.tensor([[1, 2, 3, 4]])
    assert sub.model(input_ids=ids).logits.shape == ref.model(input_ids=ids).logits.shape
    if spec == "prune:2":
        assert len(sub.model.model.layers) == 2


def test_batched_padded_rescoring_matches_engine_scoring():
    m = tiny_model(seed=1, scale=3.0)
    items = [([1, 2, 3], [4, 5, 6, 7], None), ([9], [10, 11], None), ([5, 5, 5, 5, 5], [1], None)]
    batched = rescore(m.model, items, batch_size=3)
    for (p, o, _), row in zip(items, batched, strict=True):
        ref = score(m, p, o)
        assert [s.expected_id for s in row] == [s.expected_id for s in ref.positions]
        assert max(abs(a.logprob - b.logprob) for a, b in zip(row, ref.positions, strict=True)) < 1e-4


def test_calibration_round_trip_and_null(tmp_path):
    m = tiny_model(seed=1, scale=3.0)
    cal = calibrate.calibrate(m, [[1, 2, 3], [4, 5], [6], [7, 8, 9]], max_tokens=6, top_k=3)
    assert set(cal["setups"]) == set(calibrate.SETUPS)
    fp32 = cal["setups"]["fp32-threads"]
    assert fp32["mean_abs_delta"] < 1e-4 and fp32["positions"] == 24
    path = tmp_path / "cal.json"
    calibrate.save(cal, path)
    assert calibrate.load(path, m) == json.loads(path.read_text())
    with pytest.raises(AuditUsageError):
        calibrate.load(path, tiny_model(seed=5))
    strict, loose = calibrate.honest_null(cal, "fp32"), calibrate.honest_null(cal, "bf16")
    assert max(strict["pool"]) <= max(loose["pool"])
    with pytest.raises(AuditUsageError):
        calibrate.honest_null(cal, "int4")
