"""Consensus verification in one process: re-derivation verdicts, signed votes, certificates."""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.consensus_node import respond
from support.tiny import tiny_model

from specguard.attest.receipts import ReceiptIssuer
from specguard.consensus.config import consensus_config, default_quorum
from specguard.consensus.quorum import (
    Bound,
    CertificateParseError,
    GatherResult,
    QuorumError,
    build_certificate,
    new_nonce,
    verify_certificate,
)
from specguard.consensus.rederive import ACCEPT, REJECT, UNVERIFIABLE, Judgement, Tolerances, judge
from specguard.consensus.service import VerifierService, VerifyRequestError
from specguard.consensus.vote import (
    VoteParseError,
    VoteSignatureError,
    VoteSubject,
    envelope_digest,
    parse_vote,
    sign_vote,
    verify_vote,
)
from specguard.context import NodeContext
from specguard.engine.scoring import score
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import ConfigError, RequestError
from specguard.keys import NodeKey
from specguard.plugins import consensus as plugin
from specguard.policies import load_policy
from specguard.policies.model import policy_from_dict
from specguard.transcript import SamplingParams, Transcript

EOS = 3


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11, vocab_size=64, layers=2, scale=4.0, eos_token_id=EOS)


@pytest.fixture(scope="module")
def honest(model):
    return greedy(model)


@pytest.fixture(scope="module")
def other_model():
    return tiny_model(seed=12, vocab_size=64, layers=2, scale=4.0, eos_token_id=EOS)


def generate(model, params: SamplingParams, prompt=(5, 9, 17, 30)) -> Transcript:
    return SpeculativeEngine(model).generate(list(prompt), params)


def greedy(model, n: int = 24) -> Transcript:
    # a prompt for which the tiny model does not emit EOS within n tokens (so finish is "length")
    for start in range(4, 60):
        t = generate(model, SamplingParams(max_tokens=n), prompt=(start, 9, 17, 30))
        if t.finish_reason == "length":
            return t
    raise AssertionError("no EOS-free prompt found")


def key() -> NodeKey:
    return NodeKey(Ed25519PrivateKey.generate())


def worst_token(model, t: Transcript, position: int) -> int:
    """The output token the target considers least likely at `position` (a clear tamper)."""
    r = score(model, t.prompt_ids, t.output_ids, t.params, top_k=model.vocab_size)
    return int(r.positions[position].top[-1][0])


def tampered(model, t: Transcript, position: int) -> Transcript:
    out = copy.deepcopy(t)
    tok = worst_token(model, t, position)
    out.output_ids[position] = tok
    out.tokens[position].token_id = tok
    return out


# --- re-derivation ------------------------------------------------------------------------------


def test_honest_greedy_transcript_is_accepted(model, honest):
    t = honest
    j = judge(model, t)
    assert j.verdict == ACCEPT, j.reasons
    assert j.stats["mismatched_tokens"] == 0 and j.stats["agreeing_tokens"] + j.stats["near_ties"] == len(t.output_ids)


def test_honest_seeded_sampling_is_accepted(model):
    t = generate(model, SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, top_k=20, seed=1234))
    j = judge(model, t)
    assert j.verdict == ACCEPT, j.reasons
    assert j.stats["mode"] == "gumbel"


def test_json_roundtrip_keeps_verdict(model, honest):
    t = honest
    assert judge(model, Transcript.from_json(json.loads(json.dumps(t.to_json())))).verdict == ACCEPT


def test_speculative_sampling_and_unseeded_are_unverifiable(model, honest):
    t = honest
    spec = dataclasses.replace(t, params=SamplingParams(max_tokens=24, temperature=0.8, seed=5,
                                                        mode="speculative-sampling"))
    unseeded = dataclasses.replace(t, params=SamplingParams(max_tokens=24, temperature=0.8))
    for bad in (spec, unseeded):
        j = judge(model, bad)
        assert j.verdict == UNVERIFIABLE and j.reasons


def test_tampered_token_is_rejected_with_position(model, honest):
    t = tampered(model, honest, 7)
    j = judge(model, t)
    assert j.verdict == REJECT
    assert any("output_ids[7]" in r and "not the target's choice" in r for r in j.reasons)


def test_wrong_logprob_and_top_alternative_are_rejected(model, honest):
    t = honest
    bad = copy.deepcopy(t)
    bad.tokens[3].logprob += 0.5
    j = judge(model, bad)
    assert j.verdict == REJECT and any("tokens[3].logprob" in r for r in j.reasons)
    bad = copy.deepcopy(t)
    bad.tokens[2].top = [(bad.tokens[2].top[0][0], bad.tokens[2].top[0][1] - 0.3)]
    assert judge(model, bad).verdict == REJECT


def test_other_model_is_rejected(model, other_model):
    t = greedy(other_model)
    j = judge(model, t)
    assert j.verdict == REJECT and any(r.startswith("model_digest") for r in j.reasons)
    # lying about the model digest does not help: the tokens and logprobs give it away
    lie = dataclasses.replace(t, model_digest=model.digest, tokenizer_digest=model.tokenizer_digest)
    j = judge(model, lie)
    assert j.verdict == REJECT and j.stats["logprob_errors"] > 0


def test_stop_and_length_consistency(model, honest):
    t = honest
    short = dataclasses.replace(t, output_ids=t.output_ids[:10], tokens=t.tokens[:10])
    j = judge(model, short)  # "length" with 10 of 24 tokens
    assert j.verdict == REJECT and any("finish_reason" in r for r in j.reasons)
    stop = dataclasses.replace(t, finish_reason="stop")  # "stop" without EOS
    assert judge(model, stop).verdict == REJECT
    cancelled = dataclasses.replace(short, finish_reason="cancelled")  # never certified (the body says "length")
    j = judge(model, cancelled)
    assert j.verdict == REJECT and any("'cancelled' is never certified" in r for r in j.reasons)
    unknown = dataclasses.replace(t, finish_reason="bored")
    assert judge(model, unknown).verdict == REJECT


def test_eos_stop_transcript(model):
    for start in range(0, 64):
        t = generate(model, SamplingParams(max_tokens=40), prompt=(start, 2))
        if t.finish_reason == "stop":
            break
    else:
        raise AssertionError("no prompt reached EOS")
    assert t.output_ids[-1] == EOS and judge(model, t).verdict == ACCEPT
    as_length = dataclasses.replace(t, finish_reason="length")
    assert judge(model, as_length).verdict == REJECT


def test_ignore_eos_transcript_is_judged_by_its_own_params(model):
    for start in range(0, 64):
        stopped = generate(model, SamplingParams(max_tokens=40), prompt=(start, 2))
        if stopped.finish_reason == "stop" and len(stopped.output_ids) < 39:
            break
    else:
        raise AssertionError("no prompt reached EOS early")
    params = dataclasses.replace(stopped.params, ignore_eos=True)
    t = generate(model, params, prompt=tuple(stopped.prompt_ids))
    assert t.finish_reason == "length" and len(t.output_ids) == 40
    assert t.output_ids[: len(stopped.output_ids)] == stopped.output_ids  # it went on past the EOS
    assert judge(model, t).verdict == ACCEPT
    # the same output claimed under ignore_eos=False has an EOS it should have stopped at
    claimed = dataclasses.replace(t, params=dataclasses.replace(t.params, ignore_eos=False))
    j = judge(model, claimed)
    assert j.verdict == REJECT and any("EOS before the last token" in r for r in j.reasons)
    assert claimed.binding_digest() != t.binding_digest()


def test_margin_admits_only_near_ties(model, honest):
    t = honest
    r = score(model, t.prompt_ids, t.output_ids, t.params)
    pos = min(range(len(r.positions)), key=lambda i: r.positions[i].margin)
    runner_up = [tok for tok, _ in r.positions[pos].top if tok != t.output_ids[pos]][0]
    flipped = copy.deepcopy(t)
    flipped.output_ids[pos] = runner_up
    flipped.tokens[pos].token_id = runner_up
    flipped.tokens[pos].logprob = dict(r.positions[pos].top)[runner_up]
    flipped.output_ids, flipped.tokens = flipped.output_ids[: pos + 1], flipped.tokens[: pos + 1]
    flipped = dataclasses.replace(flipped, params=dataclasses.replace(t.params, max_tokens=pos + 1))
    gap = r.positions[pos].margin
    near = judge(model, flipped, Tolerances(margin=min(1.0, gap * 2)))
    assert near.stats["near_ties"] == 1 and near.verdict == ACCEPT, near.reasons
    assert judge(model, flipped, Tolerances(margin=gap / 2)).verdict == REJECT


def test_tolerances_validate():
    with pytest.raises(RequestError):
        Tolerances(margin=float("nan"))
    with pytest.raises(RequestError):
        Tolerances(logprob_tolerance=-1)
    assert Tolerances.from_policy(load_policy("strict")).margin > 0
    assert Tolerances.from_policy(policy_from_dict({"name": "t", "consensus": {"margin": 0.01}})).margin == 0.01


# --- votes ---------------------------------------------------------------------------------------


DIG = "sha256:" + "ab" * 32


def a_vote(k: NodeKey, verdict: str = ACCEPT, nonce: str = "00" * 16, receipt: str = DIG) -> dict:
    return sign_vote(k, VoteSubject(receipt, DIG, DIG, DIG, nonce), Judgement(verdict, [], {"n": 1}), model_digest=DIG)


def test_vote_roundtrip_and_tamper():
    k = key()
    v = a_vote(k)
    assert verify_vote(v, [k.public_bytes]).verdict == ACCEPT
    bad = copy.deepcopy(v)
    bad["vote"]["verdict"] = REJECT
    with pytest.raises(VoteSignatureError, match="does not verify"):
        verify_vote(bad, [k.public_bytes])
    with pytest.raises(VoteSignatureError, match="not a trusted"):
        verify_vote(v, [key().public_bytes])
    bad = copy.deepcopy(v)
    bad["vote"]["verifier"]["key_id"] = "ed25519:0000000000000000"
    with pytest.raises(VoteParseError, match="key id"):
        parse_vote(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=10)


@settings(deadline=None, max_examples=150, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.fixed_dictionaries({"vote": json_values, "signature": json_values})))
def test_parse_vote_raises_only_parse_errors(value):
    with pytest.raises(VoteParseError):
        parse_vote(value)


@settings(deadline=None, max_examples=100, derandomize=True)
@given(st.sampled_from(["type", "receipt_digest", "binding_digest", "request_digest", "response_digest", "nonce",
                        "verdict", "reasons", "stats", "verifier", "issued_at"]), json_values)
def test_vote_field_mutations_never_verify(name, value):
    k = key()
    v = a_vote(k)
    if v["vote"][name] == value:
        return
    v["vote"][name] = value
    with pytest.raises((VoteParseError, VoteSignatureError)):
        verify_vote(v, [k.public_bytes])


# --- certificates ------------------------------------------------------------------------------


def request_for(t: Transcript) -> dict:
    """The completion request that gives `t` (token-id prompt, greedy)."""
    return {"model": "tiny", "prompt": list(t.prompt_ids), "max_tokens": t.params.max_tokens, "temperature": 0}


@pytest.fixture
def receipted(model, honest, tmp_home):
    """An honest answer (transcript, receipt, request, body) and four verifier services."""
    issuer = ReceiptIssuer(tmp_home, key())
    served = respond(model, issuer, request_for(honest))
    services = [VerifierService(model=model, key=key()) for _ in range(4)]
    yield served, services
    issuer.close()


def votes_for(services, served, nonce, transcript=None):
    body = served.verify_body(nonce)
    if transcript is not None:
        body["transcript"] = transcript.to_json()
    return [s.handle(body) for s in services]


def certificate(votes, served, nonce, q=3):
    from specguard.consensus.vote import parse_vote as pv

    gathered = GatherResult(votes=[pv(v) for v in votes])
    return build_certificate(Bound.of_receipt(served.receipt["envelope"], nonce), q, 4, gathered)


def test_certificate_verifies_and_enforces_quorum(receipted):
    served, services = receipted
    t, receipt = served.transcript, served.receipt
    nonce = new_nonce()
    votes = votes_for(services, served, nonce)
    keys = [s.key.public_bytes for s in services]
    cert = certificate(votes, served, nonce)
    assert cert["certified"] and cert["accepts"] == 4
    ok = verify_certificate(cert, receipt["envelope"], keys, 3)
    assert len(ok.accepted_by) == 4 and not ok.ignored
    assert verify_certificate(cert, None, keys, binding_digest=t.binding_digest()).quorum == 3
    # the verifier's own minimum wins over a lower certificate quorum
    with pytest.raises(QuorumError, match="need 3"):
        verify_certificate(certificate(votes[:2], served, nonce, q=1), receipt["envelope"], keys, 3)
    # only trusted keys count
    with pytest.raises(QuorumError, match="1 valid"):
        verify_certificate(cert, receipt["envelope"], keys[:1], 3)
    with pytest.raises(QuorumError, match="no trusted verifier keys"):
        verify_certificate(cert, receipt["envelope"], [], 3)


def test_replayed_duplicated_and_forged_votes_do_not_count(receipted, model):
    served, services = receipted
    t, receipt = served.transcript, served.receipt
    keys = [s.key.public_bytes for s in services]
    old_nonce, nonce = new_nonce(), new_nonce()
    old = votes_for(services, served, old_nonce)
    fresh = votes_for(services[:2], served, nonce)
    # two fresh votes + replayed old votes from the other two: only 2 count
    cert = certificate(fresh + old[2:], served, nonce)
    with pytest.raises(QuorumError, match="2 valid accepting") as err:
        verify_certificate(cert, receipt["envelope"], keys, 3)
    assert "replayed" in err.value.message
    # the same vote three times counts once
    cert = certificate([fresh[0]] * 3, served, nonce)
    with pytest.raises(QuorumError, match="1 valid accepting"):
        verify_certificate(cert, receipt["envelope"], keys, 3)
    # a forged accept (altered reject) does not verify
    bound = Bound.of_receipt(receipt["envelope"], nonce)
    subject = VoteSubject(envelope_digest(receipt["envelope"]), t.binding_digest(), bound.request_digest,
                          bound.response_digest, nonce)
    reject = sign_vote(services[3].key, subject, Judgement(REJECT, ["bad"], {}), model_digest=model.digest)
    forged = copy.deepcopy(reject)
    forged["vote"]["verdict"], forged["vote"]["reasons"] = ACCEPT, []
    cert = certificate(fresh + [votes_for(services[2:3], served, nonce)[0], forged], served, nonce)
    ok = verify_certificate(cert, receipt["envelope"], keys, 3)
    assert len(ok.accepted_by) == 3 and any("does not verify" in i for i in ok.ignored)
    # votes moved onto another receipt do not count
    other = copy.deepcopy(receipt["envelope"])
    other["signatures"][0]["keyid"] = "x"
    with pytest.raises(QuorumError, match="another receipt"):
        verify_certificate(cert, other, keys, 3)


def test_certificate_parse_errors(receipted):
    served, services = receipted
    receipt = served.receipt
    nonce = new_nonce()
    cert = certificate(votes_for(services, served, nonce), served, nonce)
    for mutate in (lambda c: c.pop("nonce"), lambda c: c.update(quorum=-1), lambda c: c.update(votes="x"),
                   lambda c: c.update(type="other")):
        bad = copy.deepcopy(cert)
        mutate(bad)
        with pytest.raises(CertificateParseError):
            verify_certificate(bad, receipt["envelope"], [s.key.public_bytes for s in services], 3)


def test_service_rejects_a_transcript_the_receipt_does_not_sign(receipted, model):
    served, services = receipted
    other = tampered(model, served.transcript, 4)
    vote = parse_vote(votes_for(services[:1], served, new_nonce(), transcript=other)[0])
    assert vote.verdict == REJECT and any("binding_digest" in r for r in vote.body["reasons"])
    good = served.verify_body(new_nonce())
    for change in ({"transcript": {}}, {"receipt": {"envelope": 1}}, {"nonce": "xyz"}, {"request": []},
                   {"response": "x"}, {"request": {"model": "tiny", "prompt": [1], "bogus": 1}}):
        with pytest.raises(VerifyRequestError):
            services[0].handle({**good, **change})
    for missing in ("transcript", "receipt", "request", "response", "nonce"):
        with pytest.raises(VerifyRequestError):
            services[0].handle({k: v for k, v in good.items() if k != missing})


def test_verify_evidence_hook(receipted):
    from specguard.attest.options import VerifyOptions
    from specguard.plugin_manager import load_plugins

    served, services = receipted
    receipt = served.receipt
    nonce = new_nonce()
    cert = certificate(votes_for(services, served, nonce), served, nonce)
    statement = json.loads(__import__("base64").b64decode(receipt["envelope"]["payload"]))
    pm = load_plugins()
    keys = [s.key.public_bytes for s in services]
    out = pm.hook.verify_evidence(slot="consensus", value=cert, statement=statement,
                                  options=VerifyOptions(verifier_keys=tuple(keys), envelope=receipt["envelope"], quorum=3))
    assert out["certified"] and out["accepts"] == 4 and out["receipt_digest_checked"]
    with pytest.raises(QuorumError):
        pm.hook.verify_evidence(slot="consensus", value=cert, statement=statement,
                                options=VerifyOptions(verifier_keys=tuple(keys[:2]), envelope=receipt["envelope"]))
    assert plugin.verify_evidence(slot="attestation", value={}, statement=statement, options=VerifyOptions()) is None


def test_routes_in_process(receipted, model, tmp_path):
    from fastapi import FastAPI
    from support.asgi import app_client

    served, _ = receipted
    node = NodeContext.for_verifier(model, load_policy("dev"), tmp_path)
    app = FastAPI()
    plugin.register_routes(app, node)
    client = app_client(app)
    info = client.get("/specguard/v1/verifier/key").json()
    nonce = new_nonce()
    resp = client.post("/specguard/v1/verify", json=served.verify_body(nonce))
    assert resp.status_code == 200
    vote = verify_vote(resp.json(), [bytes.fromhex(info["public_key"])])
    assert vote.verdict == ACCEPT and vote.nonce == nonce
    assert client.post("/specguard/v1/verify", content=b"{nope").status_code == 400
    assert client.post("/specguard/v1/verify", json={"nonce": 1}).status_code == 400
    assert client.post("/specguard/v1/test/fault", json={"behaviour": "always-accept"}).status_code in (404, 405)
    assert not hasattr(node, "verifier_service")  # the service lives in the routes' closure
    serving = FastAPI()
    plugin.register_routes(serving, NodeContext(model=model, policy=load_policy("dev"), home=tmp_path, node_key=node.node_key))
    assert not any(getattr(r, "path", "").startswith("/specguard/v1/verif") for r in serving.routes)


def test_consensus_config_and_no_verifiers(monkeypatch):
    node = SimpleNamespace(policy=load_policy("dev"), consensus={"verifiers": [], "quorum": None}, role="serve")
    assert consensus_config(node) is None
    assert plugin.judge_transcript(transcript=None, receipt={}, node=node, request=None, response=None) is None
    k = key()
    node.consensus = {"verifiers": ["http://a", {"url": "http://b", "key": k.public_hex}, "http://c", "http://d"],
                      "quorum": None}
    cfg = consensus_config(node)
    assert cfg.quorum == 3 and cfg.trusted_keys == [k.public_bytes] and cfg.on_no_quorum == "flag"
    assert [default_quorum(n) for n in (1, 3, 4, 7)] == [1, 3, 3, 5]
    node.consensus["quorum"] = 9
    with pytest.raises(ConfigError):
        consensus_config(node)


def test_serving_node_needs_trusted_verifier_keys():
    """`serve --verifier URL` without keys refuses to start; `--verifier-key` (node.consensus) supplies them."""
    k = key()
    node = SimpleNamespace(policy=load_policy("dev"), role="serve",
                           consensus={"verifiers": ["http://a", "http://b", "http://c", "http://d"], "quorum": None})
    with pytest.raises(ConfigError, match="no trusted verifier keys") as err:
        plugin.check_serving_config(node)
    assert err.value.field == "--verifier-key"
    from fastapi import FastAPI

    with pytest.raises(ConfigError):  # at start: the app is never built
        plugin.register_routes(FastAPI(), node)
    node.consensus["verifier_keys"] = [k.public_bytes, k.public_hex]
    cfg = plugin.check_serving_config(node)
    assert cfg.trusted_keys == [k.public_bytes] and cfg.quorum == 3  # n - f of 4, deduplicated keys


def test_consensus_policy_is_typed_and_rejects_unknown_keys():
    from specguard.consensus.config import consensus_policy

    assert consensus_policy(load_policy("strict")).on_no_quorum == "fail"
    assert consensus_policy(load_policy("dev")).allowed_nodes is None
    with pytest.raises(ConfigError, match="unknown key") as err:
        consensus_policy(policy_from_dict({"name": "t", "consensus": {"quorom": 3}}))
    assert err.value.got == ["quorom"]
    for bad in ({"quorum": 0}, {"quorum": True}, {"margin": "x"}, {"timeout_seconds": -1}, {"allowed_nodes": "ab"},
                {"trust_on_first_use": "yes"}, {"verifiers": [{"url": "http://a", "keys": "x"}]},
                {"rate_limit_burst": 0}, {"min_attested_verifiers": -1}):
        with pytest.raises(ConfigError):
            consensus_policy(policy_from_dict({"name": "t", "consensus": bad}))
    k = key()
    pol = consensus_policy(policy_from_dict({"name": "t", "consensus": {"allowed_nodes": [k.public_hex]}}))
    assert pol.allowed_nodes == (k.public_bytes,)


@pytest.fixture(scope="module")
def fuzz_setup(model, honest, tmp_path_factory):
    issuer = ReceiptIssuer(tmp_path_factory.mktemp("fuzz-home"), key())
    served = respond(model, issuer, request_for(honest))
    yield served, VerifierService(model=model, key=key())
    issuer.close()


@settings(deadline=None, max_examples=80, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(["transcript.prompt_ids", "transcript.output_ids", "transcript.tokens", "transcript.params",
                        "transcript.finish_reason", "transcript.model_digest", "transcript.steps", "request.prompt",
                        "request.max_tokens", "request.stop", "request.messages", "response.choices",
                        "response.id", "response.created", "response.usage"]), json_values)
def test_verify_requests_get_a_vote_or_a_typed_error(fuzz_setup, name, value):
    served, service = fuzz_setup
    body = served.verify_body("ab" * 8)
    part, field = name.split(".")
    body[part] = {**body[part], field: value}
    try:
        vote = parse_vote(service.handle(body))
    except VerifyRequestError:
        return
    assert vote.verdict in (ACCEPT, REJECT, UNVERIFIABLE)
    if field != "steps":  # anything but the unsigned steps changes what the receipt signs
        assert vote.verdict == REJECT or body[part] == served.verify_body("ab" * 8)[part]
