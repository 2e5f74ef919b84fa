"""Attack (security issue 20 §1): a node chooses its own tolerance.

A node that never runs llama.cpp writes `engine: llamacpp` into its receipt and transcript.
Verifiers that carry a [consensus.engines.llamacpp] table (the committed cross-engine calibration:
0.67 logits) then accept a token within the margin of the best at any position; the node flips
one near-tie token (on the default model: "No. Grease fires..." became "Yes."), lets the model
continue from the altered prefix, gets accepting votes, and `specguard verify` exited 0.

Now: every vote signs its tolerance profile; `specguard verify` counts only exact and same-engine
votes unless the auditor names `--accept-profile cross-engine:llamacpp`, and prints each vote's
profile, margin and deviations; the cross-engine cap rounds down; and a verifier holding the GGUF
re-executes llama.cpp itself (same-engine), where the flipped token is far outside the noise.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.cli import run
from support.consensus_node import answer, generate
from support.tiny import tiny_model

from specguard.attest.receipts import ReceiptIssuer
from specguard.consensus.config import EngineTolerance, UnknownEngineError
from specguard.consensus.profiles import ProfileError, vote_profile
from specguard.consensus.quorum import Bound, GatherResult, QuorumError, build_certificate, verify_certificate
from specguard.consensus.rederive import ACCEPT, REJECT, Judgement, Tolerances, judge
from specguard.consensus.service import VerifierService
from specguard.consensus.vote import parse_vote, sign_vote
from specguard.engine.scoring import score
from specguard.engine.speculative import SpeculativeEngine
from specguard.keys import NodeKey
from specguard.transcript import SamplingParams, TokenRecord, Transcript

ROOT = Path(__file__).resolve().parents[2]
CROSS = EngineTolerance("llamacpp", **json.loads(
    (ROOT / "core" / "consensus" / "cross_engine_calibration.json").read_text())["recommended"])
FAKE_GGUF_DIGEST = "sha256:" + "ab" * 32
N = 16


def key() -> NodeKey:
    return NodeKey(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11, vocab_size=64, layers=2, scale=2.0)


def request(prompt: list[int], n: int = N) -> dict:
    return {"model": "tiny", "prompt": list(prompt), "max_tokens": n, "temperature": 0}


def near_tie(model, t: Transcript, margin: float, before: int) -> tuple[int, int] | None:
    """The first output position < `before` whose runner-up is within `margin` logits, and that runner-up."""
    for pos in score(model, t.prompt_ids, t.output_ids, t.params, top_k=2).positions[:before]:
        (best, lp0), (runner, lp1) = pos.top[0], pos.top[1]
        if best == pos.token_id and lp0 - lp1 <= 0.9 * margin:
            return pos.position, runner
    return None


def flipped(model, t: Transcript, position: int, token: int, engine: str = "llamacpp") -> Transcript:
    """The node's lie: the runner-up at `position`, then the model's own greedy continuation of the
    altered prefix, every record the model's own log-probability, labelled `engine`."""
    prefix = list(t.output_ids[:position]) + [token]
    rest = t.params.max_tokens - len(prefix)
    cont = SpeculativeEngine(model).generate(list(t.prompt_ids) + prefix, SamplingParams(max_tokens=rest)).output_ids \
        if rest else []
    ids = prefix + list(cont)
    scored = score(model, t.prompt_ids, ids, t.params, top_k=0).positions
    records = [TokenRecord(p.position, p.token_id, p.logprob) for p in scored]
    return dataclasses.replace(t, output_ids=ids, tokens=records, engine=engine, engine_version="llama-cpp-python 0.3.36",
                               model_file_digest=FAKE_GGUF_DIGEST, engine_rederivable=False)


def swapped_answer(model, issuer, n: int = N, before: int | None = None):
    """(honest transcript, the node's signed flipped answer) for the first prompt with a near-tie."""
    for start in range(4, 60):
        request_obj, honest = generate(model, request([start, 9, 17, 30], n))
        found = near_tie(model, honest, CROSS.margin, before or n)
        if found is not None:
            return honest, answer(model, issuer, request_obj, flipped(model, honest, *found))
    raise AssertionError("no prompt with a near-tie within the cross-engine margin")


def certificate(served, services) -> dict:
    nonce = "cd" * 16
    votes = [parse_vote(s.handle(served.verify_body(nonce))) for s in services]
    bound = Bound.of_receipt(served.receipt["envelope"], nonce)
    return build_certificate(bound, len(services), len(services), GatherResult(votes=votes))


@pytest.fixture
def attack(model, tmp_home, tmp_path):
    """The node's flipped 'llamacpp' answer, certified by three verifiers that carry the cross-engine
    table, written out as the files a client holds."""
    node_key = key()
    issuer = ReceiptIssuer(tmp_home, node_key)
    try:
        honest, served = swapped_answer(model, issuer)
    finally:
        issuer.close()
    services = [VerifierService(model=model, key=key(), tolerances=Tolerances(engines=(CROSS,))) for _ in range(3)]
    cert = certificate(served, services)
    files = {}
    for name, doc in (("receipt", {**served.receipt, "consensus": cert}), ("request", served.request),
                      ("response", served.response)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(doc))
    args = ["verify", str(files["receipt"]), "--trusted-key", node_key.public_hex, "--request", str(files["request"]),
            "--response", str(files["response"])]
    for s in services:
        args += ["--verifier-key", s.key.public_hex]
    return honest, served, cert, services, args


def test_a_node_claiming_llamacpp_cannot_certify_a_flipped_token_by_default(attack, capsys):
    honest, served, cert, services, args = attack
    assert served.transcript.output_ids != honest.output_ids  # the answer was changed
    # the verifiers did what their operator configured: cross-engine, and the vote says so (signed)
    assert cert["accepts"] == 3
    for vote in cert["votes"]:
        stats = vote["vote"]["stats"]
        assert stats["profile"] == "cross-engine:llamacpp" and stats["deviations"] == 1
        assert stats["margin"] == CROSS.margin
    # the auditor's default counts exact and same-engine votes only: no certificate
    code, out, err = run(capsys, *args)
    assert code == 14, out + err
    assert "cross-engine:llamacpp" in err and "--accept-profile" in err
    with pytest.raises(QuorumError, match="cross-engine"):
        verify_certificate(cert, served.receipt["envelope"], [s.key.public_bytes for s in services], 3)


def test_the_auditor_can_accept_cross_engine_explicitly_and_sees_what_it_rests_on(attack, capsys):
    _, _, _, _, args = attack
    code, out, err = run(capsys, *args, "--accept-profile", "cross-engine:llamacpp")
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if line.strip().startswith("vote")]
    assert len(lines) == 3
    assert all(f"profile cross-engine:llamacpp, margin {CROSS.margin}, deviations 1" in line and "(counted)" in line
               for line in lines), lines
    code, out, err = run(capsys, *args, "--accept-profile", "cross-engine:other")  # another engine's profile
    assert code == 14
    code, _, err = run(capsys, *args, "--accept-profile", "loose")
    assert code == 2 and "profile" in err


def test_verify_certificate_command_counts_the_same_profiles(attack, capsys):
    _, _, _, services, args = attack
    keys = [a for s in services for a in ("--verifier-key", s.key.public_hex)]
    cmd = ["consensus", "verify-certificate", args[1], *keys]
    code, out, err = run(capsys, *cmd)
    assert code == 4 and "cross-engine:llamacpp" in err and err.count("(NOT counted)") == 3, err
    code, out, err = run(capsys, *cmd, "--accept-profile", "cross-engine")
    assert code == 0 and err.count("(counted)") == 3 and json.loads(out)["accepts"] == 3, err


def test_policy_profiles_and_same_engine_tables_are_typed():
    from specguard.consensus.config import SameEngineTable, consensus_policy
    from specguard.errors import ConfigError
    from specguard.policies.model import policy_from_dict

    def pol(consensus):
        return consensus_policy(policy_from_dict({"name": "t", "consensus": consensus}))

    got = pol({"accept_profiles": ["cross-engine:llamacpp"], "same_engine": {"llamacpp": {"gguf": "m.gguf"}}})
    assert got.accept_profiles == ("cross-engine:llamacpp",)
    assert got.same_engine == (SameEngineTable("llamacpp", "m.gguf"),)
    for bad in ({"accept_profiles": "cross-engine"}, {"accept_profiles": ["loose"]},
                {"same_engine": {"torch": {}}}, {"same_engine": {"llamacpp": {"margn": 0.1}}},
                {"same_engine": {"llamacpp": {"margin": 2.0}}}, {"same_engine": {"llamacpp": {"gguf": 1}}}):
        with pytest.raises(ConfigError):
            pol(bad)


def test_a_signed_profile_cannot_be_changed(attack):
    _, served, cert, services, _ = attack
    forged = copy.deepcopy(cert)
    for vote in forged["votes"]:
        vote["vote"]["stats"]["profile"] = "exact"
    with pytest.raises(QuorumError) as info:
        verify_certificate(forged, served.receipt["envelope"], [s.key.public_bytes for s in services], 3)
    assert "does not verify" in info.value.message


def test_votes_from_before_profiles_count_only_on_the_exact_path(attack):
    _, served, _, _, _ = attack
    bound = Bound.of_receipt(served.receipt["envelope"], "ef" * 16)
    d = served.transcript.model_digest

    def cert_with(stats: dict):
        keys = [key() for _ in range(3)]
        votes = [parse_vote(sign_vote(k, bound, Judgement(ACCEPT, [], stats), model_digest=d)) for k in keys]
        return build_certificate(bound, 3, 3, GatherResult(votes=votes)), [k.public_bytes for k in keys]

    env = served.receipt["envelope"]
    for old_exact in ({}, {"engine": "specguard", "tolerance_profile": "exact", "margin": 0.001}):
        cert, keys = cert_with(old_exact)
        assert len(verify_certificate(cert, env, keys, 3).accepted_by) == 3
    old_cross = {"engine": "llamacpp", "tolerance_profile": "cross-engine", "margin": 0.67, "near_ties": 1}
    cert, keys = cert_with(old_cross)
    for accepted in (None, ("exact", "same-engine", "cross-engine:llamacpp")):
        with pytest.raises(QuorumError, match="before tolerance profiles"):
            verify_certificate(cert, env, keys, 3, accept_profiles=accepted)
    with pytest.raises(ProfileError):
        vote_profile({"engine": "llamacpp"})


def test_the_cross_engine_cap_gives_a_short_answer_no_free_swap(model, tmp_home):
    """The cap is floor(fraction x tokens): a 4-token answer may have no within-margin swap at all."""
    issuer = ReceiptIssuer(tmp_home, key())
    try:
        _, served = swapped_answer(model, issuer, n=4, before=4)
    finally:
        issuer.close()
    assert CROSS.allowed_near_ties(4) == 0 and CROSS.allowed_near_ties(5) == 0
    verifier = VerifierService(model=model, key=key(), tolerances=Tolerances(engines=(CROSS,)))
    vote = parse_vote(verifier.handle(served.verify_body("12" * 16)))
    assert vote.verdict == REJECT and vote.body["stats"]["max_deviations"] == 0
    assert any("within the margin" in r for r in vote.body["reasons"]), vote.body["reasons"]


def test_a_verifier_without_the_engine_or_a_table_refuses(model, tmp_home):
    issuer = ReceiptIssuer(tmp_home, key())
    try:
        _, served = swapped_answer(model, issuer)
    finally:
        issuer.close()
    with pytest.raises(UnknownEngineError):
        VerifierService(model=model, key=key()).handle(served.verify_body("34" * 16))
    with pytest.raises(UnknownEngineError):
        judge(model, served.transcript, Tolerances())


def test_the_transcript_must_name_the_model_file_the_receipt_signs(model, tmp_home):
    """The file digest picks what a same-engine verifier re-executes: a transcript naming another file
    than the receipt signs (to be judged against a file the verifier holds) gets a reject vote."""
    issuer = ReceiptIssuer(tmp_home, key())
    try:
        _, served = swapped_answer(model, issuer)
    finally:
        issuer.close()
    body = served.verify_body("bc" * 16)
    body["transcript"]["model_file_digest"] = "sha256:" + "cd" * 32
    vote = parse_vote(VerifierService(model=model, key=key(), tolerances=Tolerances(engines=(CROSS,))).handle(body))
    assert vote.verdict == REJECT
    assert any(r.startswith("model_file_digest: the transcript names") for r in vote.body["reasons"]), \
        vote.body["reasons"]


def test_committed_same_engine_calibration_is_the_default_and_tight():
    """core/consensus/same_engine_calibration.json (bench/same_engine.py on the default model): the defaults
    come from it, no honest response was rejected by a calibrating (replay) setting, and the freedom the
    margin leaves is far below the cross-engine margin's."""
    from specguard.consensus.llamacpp_rederive import (
        CALIBRATION_FILE,
        SAME_ENGINE_LOGPROB_TOLERANCE,
        SAME_ENGINE_MARGIN,
    )

    data = json.loads(CALIBRATION_FILE.read_text())
    rec = data["recommended"]
    assert (SAME_ENGINE_MARGIN, SAME_ENGINE_LOGPROB_TOLERANCE) == (rec["margin"], rec["logprob_tolerance"])
    replay = [s for s in data["settings"].values() if s["calibrates"]]
    assert len(replay) >= 2 and data["responses"] >= 32
    assert all(s["false_rejects"] == 0 for s in replay)
    assert rec["margin"] >= 2 * max(s["max_logprob_drift"] for s in replay)
    free = {float(m): f for m, f in data["freedom"].items()}
    assert free[rec["margin"]] <= 0.005 < free[CROSS.margin]


# --- same-engine: a verifier that holds the GGUF re-executes llama.cpp ------------------------------


@pytest.fixture(scope="module")
def gguf_setup(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from support.tiny_gguf import tiny_gguf_model

    from specguard.engine.llamacpp import LlamaCppEngine

    directory = tmp_path_factory.mktemp("gguf")
    lm = tiny_gguf_model(directory, seed=11, vocab_size=64, scale=2.0)
    other = tiny_gguf_model(directory, seed=12, vocab_size=64, scale=2.0)
    return lm, other, LlamaCppEngine(lm, lm.name, threads=1, n_ctx=512)


def llamacpp_served(lm, engine, issuer, req: dict, change=None):
    """A llama.cpp node's signed answer to `req` (the server's prompting; `change` alters the transcript)."""
    from specguard.openai import prompting
    from specguard.openai.schema import dump_request

    parsed = prompting.parse_request(req)
    ids = prompting.prompt_ids(lm, parsed)
    params = prompting.sampling_params(parsed, prompting.requested_max_tokens(parsed))
    t = engine.generate(ids, params, top_logprobs=prompting.logprob_options(parsed)[1])
    return answer(lm, issuer, dump_request(parsed), change(t) if change else t)


def same_engine_verifier(lm) -> VerifierService:
    return VerifierService(model=lm, key=key(), tolerances=Tolerances.from_policy(None, lm))


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 7},
                                      {"temperature": 1.0, "seed": 123, "top_p": 0.9}])
def test_honest_llamacpp_answers_are_accepted_same_engine(gguf_setup, tmp_home, sampling):
    lm, _, engine = gguf_setup
    issuer = ReceiptIssuer(tmp_home, key())
    verifier = same_engine_verifier(lm)
    try:
        for start in (4, 20, 33):
            req = {"model": "tiny", "prompt": [start, 9, 17, 30], "max_tokens": 24, "logprobs": 3, **sampling}
            served = llamacpp_served(lm, engine, issuer, req)
            vote = parse_vote(verifier.handle(served.verify_body("56" * 16)))
            assert vote.verdict == ACCEPT, vote.body["reasons"]
            stats = vote.body["stats"]
            assert stats["profile"] == "same-engine:llamacpp" and stats["max_deviations"] is None
            assert stats["model_file_digest"] == served.transcript.model_file_digest
            assert stats["margin"] < 0.05 * CROSS.margin
    finally:
        issuer.close()


def test_a_flipped_token_is_rejected_same_engine(gguf_setup, tmp_home):
    """The grease-fire swap against a same-engine verifier: llama.cpp's own runner-up within the
    cross-engine margin, the rest llama.cpp's continuation: accepted cross-engine, rejected same-engine."""
    from specguard.consensus.llamacpp_rederive import LlamaCppSameEngine

    lm, _, engine = gguf_setup
    runtime = LlamaCppSameEngine(Path(lm.name), n_ctx=512)
    issuer = ReceiptIssuer(tmp_home, key())
    try:
        for start in range(4, 60):
            req = {"model": "tiny", "prompt": [start, 9, 17, 30], "max_tokens": N, "temperature": 0}
            honest = llamacpp_served(lm, engine, issuer, req).transcript
            scored = runtime.score(honest.prompt_ids, honest.output_ids, honest.params, top_k=2).positions
            tie = next((p for p in scored if p.top[0][1] - p.top[1][1] <= 0.9 * CROSS.margin), None)
            if tie is not None:
                break
        else:
            raise AssertionError("no near-tie within the cross-engine margin")

        def flip(t: Transcript) -> Transcript:
            prefix = list(t.output_ids[:tie.position]) + [tie.top[1][0]]
            rest = t.params.max_tokens - len(prefix)
            cont = engine.generate(list(t.prompt_ids) + prefix, SamplingParams(max_tokens=rest)).output_ids if rest else []
            ids = prefix + list(cont)
            lps = runtime.score(t.prompt_ids, ids, t.params, top_k=0).positions
            return dataclasses.replace(t, output_ids=ids, tokens=[TokenRecord(p.position, p.token_id, p.logprob)
                                                                  for p in lps])

        served = llamacpp_served(lm, engine, issuer, req, change=flip)
    finally:
        issuer.close()
    vote = parse_vote(same_engine_verifier(lm).handle(served.verify_body("78" * 16)))
    assert vote.verdict == REJECT and vote.body["stats"]["profile"] == "same-engine:llamacpp"
    assert any(f"output_ids[{tie.position}]" in r for r in vote.body["reasons"]), vote.body["reasons"]
    loose = VerifierService(model=lm, key=key(), tolerances=Tolerances(engines=(CROSS,)))
    assert parse_vote(loose.handle(served.verify_body("78" * 16))).verdict == ACCEPT  # what cross-engine lets by


def test_another_model_file_is_refused_not_judged(gguf_setup, tmp_home):
    """The receipt names a GGUF digest the verifier does not hold: no vote (same-engine needs the same
    file); with a cross-engine table configured the vote is labelled cross-engine."""
    lm, other, engine = gguf_setup
    issuer = ReceiptIssuer(tmp_home, key())
    req = {"model": "tiny", "prompt": [5, 9, 17, 30], "max_tokens": 8, "temperature": 0}
    try:
        honest = llamacpp_served(lm, engine, issuer, req)
        claimed = llamacpp_served(lm, engine, issuer, req,
                                  change=lambda t: dataclasses.replace(t, model_file_digest=FAKE_GGUF_DIGEST))
    finally:
        issuer.close()
    with pytest.raises(UnknownEngineError, match="model file digest"):
        same_engine_verifier(lm).handle(claimed.verify_body("9a" * 16))
    holds_another_file = VerifierService(model=lm, key=key(), tolerances=Tolerances.from_policy(None, other))
    with pytest.raises(UnknownEngineError, match="not the verifier's GGUF"):
        holds_another_file.handle(honest.verify_body("9a" * 16))
    labelled = VerifierService(model=lm, key=key(), tolerances=dataclasses.replace(
        Tolerances.from_policy(None, lm), engines=(CROSS,)))
    vote = parse_vote(labelled.handle(claimed.verify_body("9a" * 16)))
    assert vote.body["stats"]["profile"] == "cross-engine:llamacpp"
    assert parse_vote(labelled.handle(honest.verify_body("9a" * 16))).body["stats"]["profile"] == \
        "same-engine:llamacpp"


@pytest.mark.model
def test_default_model_a_flip_in_the_grease_fire_answer_is_rejected_same_engine(default_model, tmp_home):
    """The default model on its Q4_1 GGUF: the honest llama.cpp answer is accepted same-engine; the same
    answer with the runner-up at the first position where one is within the cross-engine margin (and
    llama.cpp's own continuation after it) is rejected same-engine, while a cross-engine verifier accepts it."""
    pytest.importorskip("llama_cpp")
    from specguard.consensus.llamacpp_rederive import LlamaCppSameEngine
    from specguard.engine.llamacpp import LlamaCppEngine
    from specguard.llamacpp_runtime import target_gguf

    lm = default_model
    gguf = target_gguf(lm)
    engine = LlamaCppEngine(lm, gguf, threads=1, n_ctx=min(lm.max_context, 8192))
    runtime = LlamaCppSameEngine(gguf)
    req = {"model": "smollm2-135m", "max_tokens": 10, "temperature": 0,
           "messages": [{"role": "user", "content": "Should you put water on a grease fire? Answer yes or no"}]}
    issuer = ReceiptIssuer(tmp_home, key())
    try:
        honest = llamacpp_served(lm, engine, issuer, req)
        t = honest.transcript
        scored = runtime.score(t.prompt_ids, t.output_ids, t.params, top_k=2).positions
        tie = next(p for p in scored if p.top[0][1] - p.top[1][1] <= 0.9 * CROSS.margin)

        def flip(t: Transcript) -> Transcript:
            prefix = list(t.output_ids[:tie.position]) + [tie.top[1][0]]
            cont = engine.generate(list(t.prompt_ids) + prefix,
                                   SamplingParams(max_tokens=t.params.max_tokens - len(prefix))).output_ids
            ids = prefix + list(cont)
            lps = runtime.score(t.prompt_ids, ids, t.params, top_k=0).positions
            return dataclasses.replace(t, output_ids=ids, tokens=[TokenRecord(p.position, p.token_id, p.logprob)
                                                                  for p in lps])

        lie = llamacpp_served(lm, engine, issuer, req, change=flip)
    finally:
        issuer.close()
    assert lm.decode(t.output_ids).startswith("No")
    verifier = same_engine_verifier(lm)
    ok = parse_vote(verifier.handle(honest.verify_body("ab" * 16)))
    assert ok.verdict == ACCEPT and ok.body["stats"]["profile"] == "same-engine:llamacpp", ok.body["reasons"]
    bad = parse_vote(verifier.handle(lie.verify_body("ab" * 16)))
    assert bad.verdict == REJECT and any(f"output_ids[{tie.position}]" in r for r in bad.body["reasons"])
    loose = VerifierService(model=lm, key=key(), tolerances=Tolerances(engines=(CROSS,)))
    cross = parse_vote(loose.handle(lie.verify_body("ab" * 16)))
    assert cross.body["stats"]["profile"] == "cross-engine:llamacpp"
