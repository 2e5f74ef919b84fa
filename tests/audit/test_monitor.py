"""`specguard audit monitor`: reference-free change detection (baseline / check / history).

Three layers: the statistics on synthetic closed-model answers (false alarms at alpha under
production-like nondeterminism, power against small and large changes), the store (tampering,
pinning, the history chain, hostile answers) through a mock transport, and the simulator on
loopback (q4 / int8 / prune / another model flagged, a different thread count not, a switch in
the middle of a run).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.audit_providers import make_audit_model_dir, provider
from support.cli import run as run_cli
from support.servers import free_port

from specguard.audit import AuditUsageError
from specguard.audit.client import validate_answer
from specguard.audit.monitor import (
    EXIT_CODES,
    CheckOptions,
    MonitorConfig,
    create_baseline,
    evaluate,
    load_baseline,
    read_history,
    run_check,
)
from specguard.audit.monitor_stats import (
    DIVERGED,
    Position,
    Run,
    logprob_distance,
    run_from_answer,
    text_distance,
)
from specguard.errors import ParseError, VerificationError

# --- a synthetic closed model ---------------------------------------------------------------------


def _seeded(*parts: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big"))


def closed_answer(prompt: str, *, version: str = "A", sigma: float = 0.0, perturb: float = 0.0,
                  rng: np.random.Generator | None = None, max_tokens: int = 8, top: int = 5,
                  logprobs: bool = True) -> dict:
    """A chat completion from a toy LM: 6 candidate words per position, logits seeded by the prefix.

    `sigma` is per-request noise on the logits (production nondeterminism: near-ties flip and the
    continuation changes); `perturb` a fixed small change of the weights (quantization-like);
    `version` a different model altogether."""
    rng = rng or np.random.default_rng(0)
    words: list[str] = []
    entries = []
    for i in range(max_tokens):
        logits = _seeded(version, prompt, tuple(words)).normal(0, 2.0, size=6)
        if perturb:
            logits = logits + _seeded("perturb", prompt, tuple(words)).normal(0, perturb, size=6)
        logits = logits + rng.normal(0, sigma, size=6) if sigma else logits
        lps = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        order = np.argsort(-lps)
        cands = [f" w{i}{c}" for c in "abcdef"]
        chosen = int(order[0])
        words.append(cands[chosen])
        entries.append({"token": cands[chosen], "logprob": float(lps[chosen]), "bytes": list(cands[chosen].encode()),
                        "top_logprobs": [{"token": cands[k], "logprob": float(lps[k]), "bytes": list(cands[k].encode())}
                                         for k in order[:top]]})
    message = {"role": "assistant", "content": "".join(words)}
    return {"id": "x", "object": "chat.completion", "model": "closed",
            "choices": [{"index": 0, "message": message, "finish_reason": "length",
                         "logprobs": {"content": entries} if logprobs else None}]}


def closed_run(prompt: str, **kw) -> Run:
    request = {"max_tokens": kw.get("max_tokens", 8), "logprobs": True, "top_logprobs": 5}
    checked = validate_answer(closed_answer(prompt, **kw), request)
    return run_from_answer(checked.content, checked.logprobs)


class ClosedProvider:
    """An httpx transport serving `closed_answer`; `settings` may be changed between calls."""

    def __init__(self, **settings) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(123)
        self.calls = 0
        self.hostile: dict | None = None
        #: share of requests answered by a cheap model "B" instead (a provider mixing models)
        self.mix = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = json.loads(request.content)
        if self.hostile is not None:
            return httpx.Response(200, json=self.hostile)
        settings = {**self.settings, "version": "B"} if self.mix and self.rng.random() < self.mix else self.settings
        answer = closed_answer(body["messages"][0]["content"], rng=self.rng, max_tokens=body["max_tokens"],
                               top=body.get("top_logprobs", 0), logprobs=bool(body.get("logprobs")), **settings)
        return httpx.Response(200, json=answer)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


PROMPTS = [f"prompt number {i}" for i in range(6)]

# --- distances -------------------------------------------------------------------------------------


def _pos(token: str, lps: dict[str, float]) -> Position:
    return Position(token, lps[token], {k: v for k, v in lps.items() if k != token})


def test_distances_ignore_noise_below_tolerance_and_near_ties_but_not_decisive_divergence():
    a = (_pos("x", {"x": -0.1, "y": -2.5}), _pos("z", {"z": -0.2, "q": -1.9}))
    tiny = (_pos("x", {"x": -0.1 + 1e-6, "y": -2.5}), _pos("z", {"z": -0.2, "q": -1.9 - 1e-6}))
    shifted = (_pos("x", {"x": -0.3, "y": -1.5}), _pos("z", {"z": -0.2, "q": -1.9}))
    assert logprob_distance(a, a, 1e-3) == 0.0
    assert logprob_distance(a, tiny, 1e-3) == 0.0
    assert logprob_distance(a, tiny, 0.0) > 0.0
    assert logprob_distance(a, shifted, 1e-3) == pytest.approx(((0.2 - 1e-3) + (1.0 - 1e-3)) / 2 / 2)
    # a decisive divergence at position 1 costs DIVERGED for every remaining position
    diverged = (a[0], _pos("q", {"q": -0.1, "z": -2.0}))
    assert logprob_distance(a, diverged, 1e-3) == pytest.approx(DIVERGED / 2)
    # a near-tie flip (margin below tolerance) ends the comparison at no cost
    tie_a = (_pos("x", {"x": -0.6931, "y": -0.6932}), _pos("z", {"z": -0.1}))
    tie_b = (_pos("y", {"y": -0.6931, "x": -0.6935}), _pos("w", {"w": -0.1}))
    assert logprob_distance(tie_a, tie_b, 1e-3) == 0.0
    # one answer stopping early is a divergence too
    assert logprob_distance(a, a[:1], 1e-3) == pytest.approx(DIVERGED / 2)
    assert text_distance("same words", "same words") == 0.0
    assert 0 < text_distance("the cat sat", "the cat sits") < text_distance("the cat sat", "a dog ran far") <= 1


# --- calibration and power on synthetic answers ----------------------------------------------------


def _trial(t: int, *, sigma: float, change: dict, prompts: int = 4, r: int = 4, c: int = 2, alpha: float = 0.05,
           logprobs: bool = True) -> str:
    rng = np.random.default_rng(t)
    names = [f"trial {t} prompt {j}" for j in range(prompts)]

    def make(p, **kw):
        run = closed_run(p, sigma=sigma, rng=rng, **kw)
        return run if logprobs else Run(run.content, None)

    base = [[make(p) for _ in range(r)] for p in names]
    check = [[make(p, **change) for _ in range(c)] for p in names]
    return evaluate(base, check, 1e-3, alpha, seed=t, draws=2000)["verdict"]


@pytest.mark.parametrize("sigma", [0.05, 1.0], ids=["low-noise", "high-noise"])
def test_false_alarm_rate_is_at_most_alpha_under_the_providers_own_noise(sigma):
    """Honest repeats (same model, same noise, near-tie flips included) are flagged at most alpha of the time."""
    trials, alpha = 200, 0.05
    verdicts = [_trial(t, sigma=sigma, change={}, alpha=alpha) for t in range(trials)]
    alarms = verdicts.count("change")
    # binomial(200, 0.05): mean 10, sd 3.1; > 19 alarms would mean the test is not calibrated
    assert alarms <= alpha * trials + 3 * math.sqrt(trials * alpha * (1 - alpha)), alarms
    assert "inconclusive" not in verdicts


@pytest.mark.parametrize("logprobs", [True, False], ids=["logprobs", "text-only"])
def test_changes_are_flagged_against_noise(logprobs):
    """A different model, or a small fixed change of the weights, is flagged above the provider's own noise."""
    other = [_trial(t, sigma=0.3, change={"version": "B"}, logprobs=logprobs) for t in range(20)]
    small = [_trial(t, sigma=0.05, change={"perturb": 0.5}, logprobs=logprobs) for t in range(20)]
    assert other.count("change") >= 19
    assert small.count("change") >= (18 if logprobs else 12)


def test_a_design_that_cannot_reach_alpha_is_inconclusive_not_clean():
    base = [[closed_run("p"), closed_run("p")]]
    check = [[closed_run("p", version="B")]]
    res = evaluate(base, check, 1e-3, 0.01)
    assert res["verdict"] == "inconclusive" and res["min_p_value"] > 0.01
    assert "cannot reach alpha" in res["reasons"][0]


# --- the store, through a mock provider ------------------------------------------------------------


def _baseline(tmp_path: Path, prov: ClosedProvider, **kw) -> Path:
    store = tmp_path / "store"
    cfg = MonitorConfig("http://closed.invalid/v1", "closed-model", PROMPTS, repeats=kw.pop("repeats", 4),
                        max_tokens=8, timeout=5, max_retries=0, **kw)
    create_baseline(cfg, store, transport=prov.transport())
    return store


def test_baseline_check_history_on_a_closed_model_that_changes(tmp_path):
    prov = ClosedProvider(sigma=0.2)
    store = _baseline(tmp_path, prov)
    assert prov.calls == len(PROMPTS) * 4
    base = load_baseline(store)
    assert base["summary"] == {"answered": 24, "asked": 24, "with_logprobs": 24}
    first = run_check(store, transport=prov.transport())
    prov.settings = {"sigma": 0.2, "perturb": 0.5}
    second = run_check(store, transport=prov.transport())
    assert first["verdict"] == "no_change", first["reasons"]
    assert second["verdict"] == "change" and second["p_value"] <= 0.01
    hist = read_history(store, base["digest"])
    assert [h["verdict"] for h in hist] == ["no_change", "change"] and [h["check"] for h in hist] == [1, 2]
    saved = json.loads((store / "checks" / "0002.json").read_text())
    assert saved["verdict"] == "change" and len(saved["answers"]) == len(PROMPTS)


def test_tampered_baseline_or_history_is_detected(tmp_path):
    prov = ClosedProvider()
    store = _baseline(tmp_path, prov)
    digest = load_baseline(store)["digest"]
    run_check(store, transport=prov.transport())
    run_check(store, transport=prov.transport())
    path = store / "baseline.json"
    original = path.read_text()
    doc = json.loads(original)
    doc["body"]["answers"][0][0]["run"]["positions"][0]["lp"] -= 0.5  # make the provider's noise look larger
    path.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="altered"):
        load_baseline(store)
    with pytest.raises(VerificationError):
        run_check(store, transport=prov.transport())
    # recomputing the unkeyed digest defeats the self-check, but not a pinned digest
    from specguard.audit.monitor import BASELINE_TAG, _digest

    doc["digest"] = _digest(BASELINE_TAG, doc["body"])
    path.write_text(json.dumps(doc))
    assert load_baseline(store)["digest"] != digest
    with pytest.raises(VerificationError, match="pinned"):
        load_baseline(store, expected_digest=digest)
    path.write_text(original)
    assert load_baseline(store, expected_digest=digest)["digest"] == digest
    hist_path = store / "history.jsonl"
    lines = hist_path.read_text().splitlines(keepends=True)
    hist_path.write_text(lines[1])  # the first check removed
    with pytest.raises(VerificationError, match="chain"):
        read_history(store, digest)
    edited = json.loads(lines[0])
    edited["record"]["verdict"] = "change"
    hist_path.write_text(json.dumps(edited) + "\n" + lines[1])
    with pytest.raises(VerificationError, match="altered"):
        read_history(store, digest)
    path.write_text("{not json")
    with pytest.raises(ParseError):
        load_baseline(store)


def _drop_check(store: Path, index: int) -> None:
    """What a store writer hiding check `index` does: its history lines, result and raw logs removed."""
    hist = store / "history.jsonl"
    keep = [line for line in hist.read_text().splitlines(keepends=True)
            if json.loads(line)["record"]["check"] != index]
    hist.write_text("".join(keep))
    (store / "checks" / f"{index:04d}.json").unlink()
    for p in (store / "raw").glob(f"check-{index:04d}-*"):
        p.unlink()


def test_truncated_or_deleted_history_is_caught_by_the_pinned_head(tmp_path):
    """Attack (issue 20 §5): removing the last check's lines (a `change`) or the whole history left a valid chain."""
    prov = ClosedProvider(sigma=0.05)
    store = _baseline(tmp_path, prov)
    digest = load_baseline(store)["digest"]
    run_check(store, transport=prov.transport())
    prov.settings = {"sigma": 0.05, "version": "B"}
    second = run_check(store, transport=prov.transport())
    assert second["verdict"] == "change"
    head = second["history_head"]
    assert read_history(store, digest, expected_head=head)[-1]["verdict"] == "change"
    _drop_check(store, 2)
    assert [h["verdict"] for h in read_history(store, digest)] == ["no_change"]  # the chain alone still verifies
    calls = prov.calls
    with pytest.raises(VerificationError, match="pinned head"):
        read_history(store, digest, expected_head=head)
    with pytest.raises(VerificationError, match="pinned head"):
        run_check(store, CheckOptions(history_head=head), transport=prov.transport())
    (store / "history.jsonl").unlink()
    with pytest.raises(VerificationError, match="pinned head"):
        run_check(store, CheckOptions(history_head=head), transport=prov.transport())
    assert prov.calls == calls  # refused before any query
    # without a pin, the raw logs of the deleted checks still give the deletion away
    with pytest.raises(VerificationError, match="never started"):
        run_check(store, transport=prov.transport())


def test_planted_raw_logs_are_never_reused(tmp_path):
    """Attack (issue 20 §5): raw logs planted for the next check (copies of the baseline's answers) made
    `check` answer no_change without asking the provider."""
    prov = ClosedProvider()
    store = _baseline(tmp_path, prov)
    digest = load_baseline(store)["digest"]
    prov.settings = {"version": "B"}  # the provider has switched
    for c in range(2):
        (store / "raw" / f"check-0001-r{c}.jsonl").write_bytes((store / "raw" / f"baseline-r{c}.jsonl").read_bytes())
    calls = prov.calls
    with pytest.raises(VerificationError, match="never started"):
        run_check(store, transport=prov.transport())
    assert prov.calls == calls
    # a forged start record does not help against a pinned head: the check restarts and asks the provider
    from specguard.audit.monitor import HISTORY_TAG, _digest

    record = {"kind": "started", "check": 1, "time": 0.0, "repeats": 2, "prev": digest,
              "raw_logs": {"check-0001-r0.jsonl": None, "check-0001-r1.jsonl": None}}
    (store / "history.jsonl").write_text(json.dumps({"record": record, "digest": _digest(HISTORY_TAG, record)}) + "\n")
    res = run_check(store, CheckOptions(history_head=digest), transport=prov.transport())
    assert res["verdict"] == "change" and prov.calls == calls + 2 * len(PROMPTS)
    assert len(list((store / "raw" / "discarded").iterdir())) == 2
    assert read_history(store, digest, expected_head=res["history_head"])[-1]["verdict"] == "change"


def test_an_interrupted_check_resumes_from_its_own_raw_logs(tmp_path):
    prov = ClosedProvider()
    store = _baseline(tmp_path, prov)
    digest = load_baseline(store)["digest"]
    from specguard.audit.monitor import _start_check

    index, names = _start_check(store, digest, 2, None)  # started, then killed before any answer was used
    assert index == 1 and names == ["check-0001-r0.jsonl", "check-0001-r1.jsonl"]
    for c in range(2):
        (store / "raw" / names[c]).write_bytes((store / "raw" / f"baseline-r{c}.jsonl").read_bytes())
    calls = prov.calls
    res = run_check(store, transport=prov.transport())
    assert res["verdict"] == "no_change" and prov.calls == calls  # its own start is in the history: reused
    kinds = [json.loads(line)["record"].get("kind") for line in (store / "history.jsonl").read_text().splitlines()]
    assert kinds == ["started", "check"]


def test_a_baseline_mixing_in_a_cheap_model_is_nondeterministic_not_the_null(tmp_path):
    """Attack (issue 20 §5): a provider answering part of the baseline from a cheap model inflates the
    measured noise, so a later full switch to that model passed as no_change."""
    prov = ClosedProvider(sigma=0.05)
    prov.mix = 0.5
    store = _baseline(tmp_path, prov)
    prov.mix, prov.settings = 0.0, {"sigma": 0.05, "version": "B"}
    res = run_check(store, transport=prov.transport())
    assert res["verdict"] == "inconclusive", res["reasons"]
    assert "non-deterministic" in res["reasons"][0]
    assert not res["baseline_determinism"]["deterministic"]
    # the same switch against an honest baseline is a change
    honest = ClosedProvider(sigma=0.05)
    store2 = _baseline(tmp_path / "honest", honest)
    honest.settings = {"sigma": 0.05, "version": "B"}
    assert run_check(store2, transport=honest.transport())["verdict"] == "change"
    # the insecure opt-in is explicit and every check says so
    mixed = ClosedProvider(sigma=0.05)
    mixed.mix = 0.5
    store3 = _baseline(tmp_path / "accepted", mixed, allow_nondeterministic=True)
    accepted = run_check(store3, transport=mixed.transport())
    assert any(r.startswith("WARNING: the baseline is non-deterministic") for r in accepted["reasons"])


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.3, 1.0])
def test_honest_engine_noise_is_not_called_nondeterministic(sigma):
    from specguard.audit.monitor_stats import baseline_determinism

    flagged = 0
    for t in range(50):
        rng = np.random.default_rng(t)
        runs = [[closed_run(f"t{t} p{j}", sigma=sigma, rng=rng) for _ in range(4)] for j in range(4)]
        flagged += not baseline_determinism(runs, 1e-3)["deterministic"]
    assert flagged == 0


def test_hostile_or_missing_answers_are_recorded_not_crashes(tmp_path):
    prov = ClosedProvider()
    store = _baseline(tmp_path, prov)
    prov.hostile = {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": "x", "logprob": 5.0}]}}]}
    res = run_check(store, transport=prov.transport())
    assert res["verdict"] == "inconclusive" and res["prompts_used"] == 0
    assert "provider fault" in res["per_prompt"][0]["check_problems"][0]
    with pytest.raises(AuditUsageError):
        _baseline(tmp_path, prov)  # a store's baseline is never silently replaced
    with pytest.raises(AuditUsageError):
        MonitorConfig("http://x/v1", "m", PROMPTS, repeats=1).validate()


def test_forced_rebaseline_archives_and_requeries(tmp_path):
    prov = ClosedProvider()
    store = _baseline(tmp_path, prov)
    old = load_baseline(store)["digest"]
    run_check(store, transport=prov.transport())
    calls = prov.calls
    cfg = MonitorConfig("http://closed.invalid/v1", "closed-model", PROMPTS, repeats=4, max_tokens=8, max_retries=0)
    prov.settings = {"version": "B"}
    new = create_baseline(cfg, store, force=True, transport=prov.transport())["digest"]
    assert prov.calls == calls + 4 * len(PROMPTS)  # the old raw logs are not reused
    assert new != old and read_history(store, new) == []
    archived = list((store / "archive").iterdir())
    assert len(archived) == 1 and (archived[0] / "history.jsonl").is_file()
    assert json.loads((archived[0] / "baseline.json").read_text())["digest"] == old


def test_text_only_baseline(tmp_path):
    prov = ClosedProvider(sigma=0.2)
    store = _baseline(tmp_path, prov, logprobs=False)
    assert load_baseline(store)["summary"]["with_logprobs"] == 0
    assert run_check(store, transport=prov.transport())["verdict"] == "no_change"
    prov.settings = {"sigma": 0.2, "version": "B"}
    res = run_check(store, transport=prov.transport())
    assert res["verdict"] == "change" and res["mode"] == "text"


# --- the simulator on loopback ----------------------------------------------------------------------


class ThreadServer:
    """A simulated provider app served by uvicorn in a thread on 127.0.0.1 (stopped by the fixture)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


SIM_PROMPTS = [f"Question {i}: tell me about topic number {i}." for i in range(4)]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from specguard.audit.simulate import build_app
    from specguard.models import load_model

    base = tmp_path_factory.mktemp("monitor")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    ref = load_model(str(ref_dir))
    other = load_model(str(make_audit_model_dir(base / "other", seed=1)))
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SIM_PROMPTS))
    srv = ThreadServer(build_app(ref))
    store = base / "store"
    try:
        create_baseline(MonitorConfig(srv.url, "claimed", SIM_PROMPTS, repeats=4, max_tokens=10), store)
    finally:
        srv.stop()
    return {"ref": ref, "ref_dir": ref_dir, "other": other, "store": store, "prompts": prompts, "base": base}


@pytest.mark.parametrize("served", ["q4", "int8", "prune:2", "mix:q4:0.5", "other-model", "noise:1e-6"])
def test_simulated_substitutes_are_flagged_and_fp32_level_noise_is_not(sim, served):
    from specguard.audit.simulate import build_app
    from specguard.audit.substitutes import parse_substitute

    app = build_app(sim["other"]) if served == "other-model" else build_app(sim["ref"], parse_substitute(served))
    srv = ThreadServer(app)
    try:
        res = evaluate_store(sim["store"], srv.url)
    finally:
        srv.stop()
    if served == "noise:1e-6":  # a stand-in for fp32 kernel noise (1e-6 relative): below --tolerance
        assert res["verdict"] == "no_change", res
    else:
        assert res["verdict"] == "change", res
        assert res["p_value"] <= 0.01


def evaluate_store(store: Path, url: str) -> dict:
    """A check without touching the store's history (the tests share one baseline)."""
    base = load_baseline(store)
    cfg = MonitorConfig(url, base["model"], base["prompts"], max_tokens=base["request"]["max_tokens"])
    from specguard.audit.monitor import _query

    rounds = [_query(cfg, store.parent / f"raw-{time.monotonic_ns()}-{c}.jsonl") for c in range(2)]
    check = [[Run.from_json(rounds[c][j]["run"]) for c in range(2)] for j in range(len(cfg.prompts))]
    return evaluate(base["runs"], check, base["tolerance"], 0.01)


def test_cli_switch_mid_run_on_a_provider_with_other_threads(sim, capsys):
    """Baseline on the default thread count; the provider then runs on one thread (honest: no change) and,
    after the first check's requests, silently switches to q4 (change, exit 6); history shows both."""
    store = str(sim["base"] / "cli-store")
    n, c = len(SIM_PROMPTS), 2
    from specguard.audit.simulate import build_app

    srv = ThreadServer(build_app(sim["ref"]))
    try:
        code, out, err = run_cli(capsys, "audit", "monitor", "baseline", "--base-url", srv.url, "--model", "claimed",
                                 "--store", store, "--prompts", str(sim["prompts"]), "--n-prompts", str(n),
                                 "--repeats", "3", "--max-tokens", "10", "--json")
    finally:
        srv.stop()
    assert code == 0, err
    digest = json.loads(out)["digest"]
    with provider(sim["ref_dir"], "--threads", "1", "--switch-after", str(n * c), "--switch-to", "q4") as (url, _s):
        code1, out1, err1 = run_cli(capsys, "audit", "monitor", "check", "--store", store, "--base-url", url,
                                    "--repeats", str(c), "--baseline-digest", digest, "--json")
        code2, out2, err2 = run_cli(capsys, "audit", "monitor", "check", "--store", store, "--base-url", url,
                                    "--repeats", str(c), "--baseline-digest", digest)
    assert code1 == EXIT_CODES["no_change"] == 0, out1 + err1
    assert json.loads(out1)["verdict"] == "no_change"
    assert code2 == EXIT_CODES["change"] == 6, out2 + err2
    assert out2.startswith("check 2: change")
    code, out, err = run_cli(capsys, "audit", "monitor", "history", "--store", store, "--json")
    assert code == 0, err
    assert [h["verdict"] for h in json.loads(out)["checks"]] == ["no_change", "change"]
    code, out, _ = run_cli(capsys, "audit", "monitor", "history", "--store", store)
    assert "no_change" in out and "change" in out.splitlines()[-1]
    code, _, err = run_cli(capsys, "audit", "monitor", "check", "--store", store, "--baseline-digest", "sha256:00")
    assert code == VerificationError.exit_code and "pinned" in err
    head = re.search(r"history head (sha256:[0-9a-f]{64})", out2).group(1)
    code, out, err = run_cli(capsys, "audit", "monitor", "history", "--store", store, "--history-head", head)
    assert code == 0 and f"history head {head}" in out, err
    code, _, err = run_cli(capsys, "audit", "monitor", "check", "--store", store, "--history-head", digest)
    assert code == VerificationError.exit_code and "after the pinned head" in err
