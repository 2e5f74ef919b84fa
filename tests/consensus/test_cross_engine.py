"""Cross-engine re-checking: a verifier judges another engine's transcripts with a calibrated,
per-engine tolerance (margin, logprob tolerance, a cap on within-margin disagreements per
response), refuses engines it has no tolerance for, and records what it used in its signed vote.

The mechanism is tested on tiny models (an "other engine" = the same tiny model with slightly
perturbed weights, calibrated with `cross_engine_calibrate`). The `model`-marked test runs the
real pair on the default model: llama.cpp on its Q4_1 GGUF vs the fp32 torch model, with the
table committed in core/consensus/cross_engine_calibration.json (bench/cross_engine.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.tiny import tiny_model

from specguard.consensus.calibrate import cross_engine_calibrate, freedom, recommended_cross_engine
from specguard.consensus.config import EngineTolerance, UnknownEngineError, consensus_policy
from specguard.consensus.rederive import ACCEPT, REJECT, Tolerances, judge
from specguard.consensus.vote import VoteSubject, parse_vote, sign_vote
from specguard.context import NodeContext
from specguard.engine.scoring import score
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import ConfigError
from specguard.keys import NodeKey
from specguard.models import LoadedModel
from specguard.policies.model import policy_from_dict
from specguard.transcript import SamplingParams, TokenRecord, Transcript

CALIBRATION = Path(__file__).resolve().parents[2] / "core" / "consensus" / "cross_engine_calibration.json"
N = 24
PROMPTS = [[s, 9, 17, 30, s + 1] for s in range(4, 16)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy box two threads wait on each other."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def ref() -> LoadedModel:
    return tiny_model(seed=21, vocab_size=64, scale=2.0)


def perturbed(model: LoadedModel, scale: float, seed: int = 0) -> LoadedModel:
    """The same model with every weight moved by relative noise `scale`: another implementation
    (other kernels, another quantization) of the same weights."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.abs().mean() * scale)
    return out


def engine_greedy(model: LoadedModel):
    """`GreedyIds` for a torch model: its greedy ids and their logprobs (its own view)."""
    def generate(prompt, n):
        t = SpeculativeEngine(model).generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True))
        return t.output_ids, [r.logprob for r in t.tokens]
    return generate


def transcript(ref: LoadedModel, prompt: list[int], ids: list[int], logprobs: list[float], engine: str,
               params: SamplingParams | None = None) -> Transcript:
    """What a node running `engine` sends, claiming the reference model."""
    params = params or SamplingParams(max_tokens=len(ids), ignore_eos=True)
    return Transcript(
        model_name=ref.name, model_digest=ref.digest, tokenizer_digest=ref.tokenizer_digest, prompt_ids=list(prompt),
        output_ids=list(ids), tokens=[TokenRecord(i, t, lp) for i, (t, lp) in enumerate(zip(ids, logprobs, strict=True))],
        steps=[], params=params, finish_reason="length", drafter="none", engine=engine,
    )


def run(ref: LoadedModel, model: LoadedModel, engine: str = "other") -> list[Transcript]:
    gen = engine_greedy(model)
    return [transcript(ref, p, *gen(p, N), engine) for p in PROMPTS]


@pytest.fixture(scope="module")
def other(ref) -> LoadedModel:
    return perturbed(ref, 0.01)


@pytest.fixture(scope="module")
def table(ref, other) -> EngineTolerance:
    """Calibrated on honest runs of the other engine (the first half of the prompts)."""
    report = cross_engine_calibrate(ref, engine_greedy(other), PROMPTS[:6], N, engine="other")
    assert report.disagreements > 0, "the perturbation must produce near-tie flips for this test to mean anything"
    return EngineTolerance(engine="other", **recommended_cross_engine(report, factor=2.0))


# --- configuration -------------------------------------------------------------------------------


def policy(consensus: dict):
    return policy_from_dict({"name": "t", "consensus": consensus})


def dev_policy(consensus: dict):
    """An insecure (dev-like) policy: a verifier without an allow-list starts only under one (issue 20 §4)."""
    return policy_from_dict({"name": "t", "attestation": {"allow_simulated": True}, "consensus": consensus})


def test_engine_tables_are_typed_and_strict():
    good = {"margin": 0.5, "logprob_tolerance": 0.4, "max_near_tie_fraction": 0.1}
    pol = consensus_policy(policy({"engines": {"llamacpp": good | {"max_near_ties": 3}}}))
    assert pol.engines == (EngineTolerance("llamacpp", 0.5, 0.4, 0.1, 3),)
    tol = Tolerances.from_policy(pol)
    assert tol.for_engine("llamacpp").margin == 0.5 and tol.for_engine("specguard").margin == tol.margin
    bad_tables = [
        {"llamacpp": good | {"margn": 0.5}},  # typo
        {"llamacpp": {"margin": 0.5, "logprob_tolerance": 0.4}},  # no cap: refused, never unbounded
        {"llamacpp": good | {"margin": 2.0}},
        {"llamacpp": good | {"max_near_tie_fraction": -0.1}},
        {"llamacpp": good | {"max_near_ties": 1.5}},
        {"specguard": good},  # same-engine re-checking stays exact
        {"transformers": good},
        {"bad name!": good},
        {"llamacpp": "loose"},
        ["llamacpp"],
    ]
    for engines in bad_tables:
        with pytest.raises(ConfigError):
            consensus_policy(policy({"engines": engines}))


def test_cap_is_a_fraction_of_the_response_bounded_by_the_count():
    """floor(fraction x tokens): rounding down, so short answers get no free within-margin swap."""
    t = EngineTolerance("x", 0.5, 0.5, 0.1)
    assert [t.allowed_near_ties(n) for n in (1, 9, 10, 11, 32, 100)] == [0, 0, 1, 1, 3, 10]
    assert EngineTolerance("x", 0.5, 0.5, 0.1, max_near_ties=2).allowed_near_ties(100) == 2
    assert EngineTolerance("x", 0.5, 0.5, 0.0).allowed_near_ties(100) == 0


# --- unknown engines are refused ----------------------------------------------------------------


def test_unknown_engine_is_refused_never_judged_with_some_margin(ref, other, table):
    t = run(ref, other, engine="llamacpp")[0]
    for tol in (Tolerances(), Tolerances(engines=(table,)), None):
        with pytest.raises(UnknownEngineError) as info:
            judge(ref, t, tol)
        assert info.value.field == "transcript.engine" and info.value.got == "llamacpp"
    weird = dataclasses.replace(t, engine=["specguard"])  # a non-string engine name from JSON
    with pytest.raises(UnknownEngineError):
        judge(ref, weird, Tolerances(engines=(table,)))


def test_same_engine_stays_exact(ref, other, table):
    """A transcript that names an exact engine is judged with the exact margin and no cap, even when
    a cross-engine table exists: the other engine's near-tie flips do not pass as 'specguard'."""
    tol = Tolerances(engines=(table,))
    honest = SpeculativeEngine(ref).generate(PROMPTS[0], SamplingParams(max_tokens=N, ignore_eos=True))
    for name in ("specguard", "transformers"):
        j = judge(ref, dataclasses.replace(honest, engine=name), tol)
        assert j.verdict == ACCEPT and j.stats["tolerance_profile"] == "exact" and j.stats["max_near_ties"] is None
    flipped = [t for t in run(ref, other) if any(not p.agrees for p in score(ref, t.prompt_ids, t.output_ids).positions)]
    assert flipped
    j = judge(ref, dataclasses.replace(flipped[0], engine="specguard"), tol)
    assert j.verdict == REJECT


# --- the mechanism on tiny models ----------------------------------------------------------------


def test_honest_other_engine_passes_the_cross_engine_recheck(ref, other, table):
    tol = Tolerances(engines=(table,))
    verdicts = [judge(ref, t, tol) for t in run(ref, other)]  # held-out prompts included
    assert all(j.verdict == ACCEPT for j in verdicts), [j.reasons for j in verdicts if j.verdict != ACCEPT]
    assert sum(j.stats["near_ties"] for j in verdicts) > 0  # the tolerance was actually needed
    for j in verdicts:
        assert j.stats["engine"] == "other" and j.stats["tolerance_profile"] == "cross-engine"
        assert j.stats["margin"] == table.margin and j.stats["logprob_tolerance"] == table.logprob_tolerance


@pytest.mark.parametrize("substitute", ["another model", "much noisier weights"])
def test_substitutes_are_rejected(ref, table, substitute):
    tol = Tolerances(engines=(table,))
    model = tiny_model(seed=22, vocab_size=64, scale=2.0) if substitute == "another model" else perturbed(ref, 0.3)
    verdicts = [judge(ref, t, tol) for t in run(ref, model)]
    assert all(j.verdict == REJECT for j in verdicts), [j.stats for j in verdicts if j.verdict != REJECT]


def greedy_with_swaps(ref: LoadedModel, prompt: list[int], n: int, margin: float, k: int) -> tuple[list[int], list[float], int]:
    """A dishonest engine: greedy, but it takes the runner-up whenever that is within `margin`,
    up to `k` times. Returns (ids, logprobs, swaps made)."""
    ids: list[int] = []
    lps: list[float] = []
    swaps = 0
    with torch.no_grad():
        for _ in range(n):
            logits = ref.model(input_ids=torch.tensor([prompt + ids])).logits[0, -1].float()
            top = torch.topk(logits, 2)
            choice = int(top.indices[0])
            if swaps < k and float(top.values[0] - top.values[1]) <= margin * 0.9:
                choice, swaps = int(top.indices[1]), swaps + 1
            ids.append(choice)
            lps.append(float(torch.log_softmax(logits, -1)[choice]))
    return ids, lps, swaps


def test_within_margin_choices_beyond_the_cap_are_rejected(ref, table):
    """A dishonest engine that picks within-margin runner-ups: accepted up to the cap, rejected above it."""
    tol = Tolerances(engines=(table,))
    allowed = table.allowed_near_ties(N)
    for prompt in PROMPTS:
        ids, lps, swaps = greedy_with_swaps(ref, prompt, N, table.margin, allowed + 1)
        if swaps == allowed + 1:
            break
    else:
        raise AssertionError("no prompt with enough near-ties for this test")
    over = judge(ref, transcript(ref, prompt, ids, lps, "other"), tol)
    assert over.stats["near_ties"] == allowed + 1 and over.stats["mismatched_tokens"] == 0
    assert over.verdict == REJECT and any("within the margin" in reason for reason in over.reasons), over.reasons
    ids, lps, swaps = greedy_with_swaps(ref, prompt, N, table.margin, allowed)
    ok = judge(ref, transcript(ref, prompt, ids, lps, "other"), tol)
    assert swaps == allowed and ok.stats["near_ties"] == allowed
    assert ok.verdict == ACCEPT, ok.reasons


def test_sampled_margin_is_scaled_by_the_temperature(ref, table):
    tol = Tolerances(engines=(table,)).for_engine("other")
    assert tol.margin_for(SamplingParams(temperature=0.5, seed=1)) == pytest.approx(table.margin / 0.5)
    assert tol.margin_for(SamplingParams()) == table.margin
    exact = Tolerances().for_engine("specguard")
    assert exact.margin_for(SamplingParams(temperature=0.5, seed=1)) == exact.margin


def test_vote_records_engine_margin_and_cap(ref, other, table):
    j = judge(ref, run(ref, other)[0], Tolerances(engines=(table,)))
    key = NodeKey(Ed25519PrivateKey.generate())
    d = "sha256:" + "0" * 64
    vote = parse_vote(sign_vote(key, VoteSubject(d, d, d, d, "ab" * 8), j, model_digest=d))
    stats = vote.body["stats"]
    assert (stats["engine"], stats["tolerance_profile"], stats["margin"]) == ("other", "cross-engine", table.margin)
    assert stats["max_near_ties"] == table.allowed_near_ties(N)


def test_freedom_counts_alternatives_within_the_margin(ref):
    seqs = [(t.prompt_ids, t.output_ids) for t in run(ref, ref)[:3]]
    small, big = freedom(ref, seqs, [1e-6, 100.0], inspect=8)
    assert small.positions == big.positions == 3 * N
    assert big.with_alternative == big.positions and big.alternatives == 7 * big.positions
    assert small.with_alternative <= big.with_alternative


def test_committed_calibration_is_consistent():
    data = json.loads(CALIBRATION.read_text())
    rep, rec = data["report"], data["recommended"]
    assert rep["engine"] == "llamacpp" and rep["tokens"] >= 500
    assert rec["margin"] >= rep["gap_quantiles"]["max"] and rec["margin"] <= 1.0
    assert rec["max_near_tie_fraction"] >= rep["max_fraction_per_response"]
    assert EngineTolerance("llamacpp", **rec).allowed_near_ties(32) >= 1


# --- the real pair: llama.cpp Q4_1 vs fp32 torch (default model) ---------------------------------


@pytest.mark.model
def test_llamacpp_vs_torch_on_the_default_model():
    pytest.importorskip("llama_cpp")
    from specguard.audit.substitutes import apply_substitute, parse_substitute
    from specguard.consensus.calibrate import llamacpp_greedy
    from specguard.drafters.llamacpp import target_gguf
    from specguard.models import load_model

    n = 32
    data = json.loads(CALIBRATION.read_text())
    table = EngineTolerance("llamacpp", **data["recommended"])
    tol = Tolerances(engines=(table,))
    model = load_model("smollm2-135m")
    texts = ["Write a haiku about autumn leaves.", "Explain what a hash function is in two sentences.",
             "List three uses of copper."]
    prompts = [model.encode_chat([{"role": "user", "content": x}]) for x in texts]
    llama = llamacpp_greedy(str(target_gguf(model)))
    honest = [transcript(model, p, *llama(p, n), "llamacpp") for p in prompts]
    verdicts = [judge(model, t, tol) for t in honest]
    assert all(j.verdict == ACCEPT for j in verdicts), [j.reasons for j in verdicts]
    with pytest.raises(UnknownEngineError):
        judge(model, honest[0], Tolerances())
    tiny = tiny_model(seed=5, vocab_size=model.vocab_size)
    for name, sub in [("prune:2", apply_substitute(model, parse_substitute("prune:2"))),
                      ("q4", apply_substitute(model, parse_substitute("q4"))), ("tiny", tiny)]:
        gen = engine_greedy(sub)
        judged = [judge(model, transcript(model, p, *gen(p, n), "llamacpp"), tol) for p in prompts]
        assert all(j.verdict == REJECT for j in judged), (name, [j.stats for j in judged])


def test_verifier_route_refuses_an_unknown_engine_with_422_and_no_vote(tmp_home):
    """Through the verifier's HTTP route: a receipt signed for another engine. Without a table for it
    the answer is a typed 422 error, not a vote; with one, the vote names the engine's tolerance."""
    from support.consensus_node import answer, respond

    from specguard.attest.receipts import ReceiptIssuer
    from specguard.consensus.quorum import new_nonce
    from specguard.consensus.vote import verify_vote

    model = tiny_model(seed=11, vocab_size=64, layers=2, scale=4.0)
    issuer = ReceiptIssuer(tmp_home, NodeKey(Ed25519PrivateKey.generate()))
    try:
        served = respond(model, issuer, {"model": "tiny", "prompt": [5, 9, 17, 30], "max_tokens": 12,
                                         "temperature": 0})
        relabelled = answer(model, issuer, served.request, dataclasses.replace(served.transcript, engine="llamacpp"))
    finally:
        issuer.close()
    table = {"margin": 0.5, "logprob_tolerance": 0.5, "max_near_tie_fraction": 0.2}
    for engines, expected in (({}, 422), ({"llamacpp": table}, 200)):
        client, info = _verifier_client(model, engines)
        assert client.post("/specguard/v1/verify", json=served.verify_body(new_nonce())).status_code == 200
        resp = client.post("/specguard/v1/verify", json=relabelled.verify_body(new_nonce()))
        assert resp.status_code == expected, resp.text
        if expected == 422:
            assert "engine" in resp.json()["error"]["message"] + str(resp.json()["error"].get("param"))
        else:
            vote = verify_vote(resp.json(), [bytes.fromhex(info["public_key"])])
            assert vote.verdict == ACCEPT and vote.body["stats"]["engine"] == "llamacpp"
            assert vote.body["stats"]["tolerance_profile"] == "cross-engine"


def test_a_transcript_cannot_claim_a_looser_engine_than_its_receipt(tmp_home):
    """Attack: the receipt shows the client the exact built-in engine, while the transcript sent to the
    verifiers names llama.cpp to be judged with the cross-engine margin. The verifier rejects."""
    from support.consensus_node import respond

    from specguard.attest.receipts import ReceiptIssuer
    from specguard.consensus.quorum import new_nonce
    from specguard.consensus.vote import verify_vote

    model = tiny_model(seed=11, vocab_size=64, layers=2, scale=4.0)
    issuer = ReceiptIssuer(tmp_home, NodeKey(Ed25519PrivateKey.generate()))
    try:
        served = respond(model, issuer, {"model": "tiny", "prompt": [5, 9, 17, 30], "max_tokens": 12,
                                         "temperature": 0})
    finally:
        issuer.close()
    client, info = _verifier_client(model, {"llamacpp": {"margin": 0.5, "logprob_tolerance": 0.5,
                                                         "max_near_tie_fraction": 0.2}})
    body = served.verify_body(new_nonce())
    body["transcript"]["engine"] = "llamacpp"
    resp = client.post("/specguard/v1/verify", json=body)
    assert resp.status_code == 200, resp.text
    vote = verify_vote(resp.json(), [bytes.fromhex(info["public_key"])])
    assert vote.verdict == REJECT
    assert any("engine: the transcript names 'llamacpp', the receipt signs 'specguard'" in r
               for r in vote.body["reasons"]), vote.body["reasons"]


def _verifier_client(model, engines):
    from fastapi import FastAPI
    from support.asgi import app_client

    from specguard.plugins import consensus as plugin

    node = NodeContext(model=model, policy=dev_policy({"engines": engines}), home=Path("."),
                       node_key=NodeKey(Ed25519PrivateKey.generate()), role="verifier")
    app = FastAPI()
    plugin.register_routes(app, node)
    client = app_client(app)
    return client, client.get("/specguard/v1/verifier/key").json()
