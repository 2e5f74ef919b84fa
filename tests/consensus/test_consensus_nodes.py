"""Multi-node consensus: four verifier processes on loopback ports, real sockets, real signatures.

The verifiers run `python -m specguard.consensus.verifier_app` (and one `specguard serve --role
verifier`) through tests/support/fault_verifier.py, which loads the test-only fault-injection
plugin (tests/support/fault_injection.py), so each scenario can make one or two of them lie,
stall, sign with a wrong key or replay old votes. Responses (honest, tampered, from a
substituted model) are produced in this process with a tiny model saved to disk, the server's
own prompting and body code, receipted with a real ReceiptIssuer, and sent to the verifier
processes with the request and body.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from click.testing import CliRunner
from support.consensus_node import Served, answer, generate
from support.fault_injection import FAULT_PATH
from support.fault_verifier import fault_env, fault_verifier_cmd
from support.servers import free_port, start_process
from support.tiny import tiny_model

from specguard.attest.options import VerifyOptions
from specguard.attest.receipts import ReceiptIssuer
from specguard.attest.tee.collect import collect_evidence
from specguard.attest.tee.document import load_document
from specguard.consensus.config import ConsensusWithheldError, NoQuorumError
from specguard.consensus.quorum import (
    QuorumError,
    ReceiptedResponse,
    check_verifier_evidence,
    request_certificate,
    verify_certificate,
)
from specguard.consensus.rederive import ACCEPT, REJECT
from specguard.engine.scoring import score
from specguard.errors import PolicyError, ValidationError
from specguard.keys import load_or_create_node_key
from specguard.models import load_model
from specguard.plugins import consensus as plugin
from specguard.plugins.consensus import cli as consensus_cli
from specguard.policies import load_policy
from specguard.policies.model import policy_from_dict

VOCAB = 64
PROMPT = [5, 9, 17, 30, 2]
TIMEOUT = 3.0


def make_model_dir(path: Path) -> Path:
    """A 4-layer random Llama (peaky LM head) with a WordLevel tokenizer ("<i>" tokens), as an HF dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    loaded = tiny_model(seed=21, vocab_size=VOCAB, layers=4, scale=4.0)
    loaded.model.save_pretrained(str(path))
    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(VOCAB)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>").save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The genuine model (in this process) and four verifier processes with their pinned keys."""
    root = tmp_path_factory.mktemp("consensus")
    model_dir = make_model_dir(root / "model")
    homes = [root / f"verifier{i}" for i in range(4)]
    keys = [load_or_create_node_key(h).public_bytes for h in homes]  # keys given as files, not fetched
    env = fault_env("honest", SPECGUARD_TEST_VERIFIER_SLOW_SECONDS="15", OMP_NUM_THREADS="1")

    def start(i: int) -> object:
        port = free_port()
        if i == 0:  # one verifier is the full server in verifier role, the others the standalone app
            args = fault_verifier_cmd("serve", "--role", "verifier", "--model", str(model_dir), "--port", str(port),
                                      "--log-level", "warning")
            return start_process(args, port, env={**env, "SPECGUARD_HOME": str(homes[0])})
        return start_process(fault_verifier_cmd("app", "--model", str(model_dir), "--port", str(port), "--home",
                                                str(homes[i])), port, env=env)

    with ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(start, range(4)))
    # the serving node: asks the four verifiers, trusts their keys (given with --verifier-key, as files and hex)
    policy = root / "serving-policy.toml"
    policy.write_text(f'name = "consensus-test"\n[consensus]\ntimeout_seconds = {TIMEOUT}\n')
    (root / "v0.pub").write_text(keys[0].hex() + "\n")
    key_args = ["--verifier-key", str(root / "v0.pub")] + [a for k in keys[1:] for a in ("--verifier-key", k.hex())]
    port = free_port()
    verifier_args = [a for p in procs for a in ("--verifier", p.url)]
    serving = start_process([sys.executable, "-m", "specguard", "serve", "--model", str(model_dir), "--port",
                             str(port), "--policy", str(policy), "--quorum", "3", "--log-level", "warning",
                             "--served-model-name", "tiny", *key_args,
                             *verifier_args], port, env={"SPECGUARD_HOME": str(root / "serving-node")})
    procs_all = [*procs, serving]
    try:
        yield SimpleNamespace(model=load_model(str(model_dir)), procs=procs, urls=[p.url for p in procs], keys=keys,
                              root=root, serving=serving)
    finally:
        for p in procs_all:
            p.stop(timeout=5)


@pytest.fixture
def behave(cluster):
    """Set verifier i's behaviour; every verifier is honest again after the test."""

    def set_(i: int, behaviour: str) -> None:
        r = httpx.post(cluster.urls[i] + FAULT_PATH, json={"behaviour": behaviour}, timeout=10)
        assert r.json() == {"behaviour": behaviour}

    yield set_
    for i, p in enumerate(cluster.procs):
        if p.alive():
            set_(i, "honest")


@pytest.fixture(scope="module")
def issuer(cluster):
    iss = ReceiptIssuer(cluster.root / "serving", load_or_create_node_key(cluster.root / "serving"))
    yield iss
    iss.close()


def request(max_tokens: int = 24, temperature: float = 0.0, seed: int | None = None) -> dict:
    """A completion request with the token-id prompt PROMPT."""
    out = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": temperature}
    return out if seed is None else {**out, "seed": seed}


def honest(cluster, issuer, req: dict | None = None) -> Served:
    """An honest node's answer: generated, body built and receipt signed as the server does."""
    request_obj, t = generate(cluster.model, req or request())
    return answer(cluster.model, issuer, request_obj, t)


def certify(cluster, issuer, served: Served, q: int = 3) -> tuple[dict, dict]:
    checked = ReceiptedResponse(served.transcript.to_json(include_steps=False), served.receipt, served.request,
                                served.response)
    cert = request_certificate(cluster.urls, checked, cluster.keys, q, timeout=TIMEOUT)
    return cert, served.receipt


def lying_node(cluster, issuer, transcript_of) -> Served:
    """A node serving a substituted model while claiming the genuine model's digests."""
    fake = copy.deepcopy(cluster.model)
    transcript_of(fake)
    fake._digest = None
    request_obj, t = generate(fake, request())
    t = dataclasses.replace(t, model_digest=cluster.model.digest, tokenizer_digest=cluster.model.tokenizer_digest)
    return answer(cluster.model, issuer, request_obj, t)


def round_to_4_bits(m) -> None:
    with torch.no_grad():
        for p in m.model.parameters():
            scale = p.abs().max() / 7
            p.copy_((p / scale).round().clamp(-8, 7) * scale)


def drop_two_layers(m) -> None:
    m.model.model.layers = m.model.model.layers[:2]
    m.model.config.num_hidden_layers = 2
    if getattr(m.model.config, "layer_types", None):
        m.model.config.layer_types = m.model.config.layer_types[:2]


def tamper(cluster, issuer, served: Served, position: int) -> Served:
    """A node that changed one output token (and answers consistently with the change)."""
    t = served.transcript
    r = score(cluster.model, t.prompt_ids, t.output_ids, t.params, top_k=VOCAB)
    worst = int(r.positions[position].top[-1][0])
    out = copy.deepcopy(t)
    out.output_ids[position] = worst
    out.tokens[position].token_id = worst
    return answer(cluster.model, issuer, served.request, out)


# --- scenarios -------------------------------------------------------------------------------------


def test_all_honest_certified_and_verifiable_offline(cluster, issuer):
    for req in (request(), request(temperature=0.8, seed=99)):
        cert, receipt = certify(cluster, issuer, honest(cluster, issuer, req))
        assert cert["certified"] and cert["accepts"] == 4 and not cert["dissent"] and not cert["failures"]
        ok = verify_certificate(cert, receipt["envelope"], cluster.keys, 3)
        assert sorted(ok.accepted_by) == sorted(v["vote"]["verifier"]["key_id"] for v in cert["votes"])


def test_votes_name_each_verifiers_tee_evidence_and_verify_checks_it(cluster, issuer, tmp_path):
    cert, receipt = certify(cluster, issuer, honest(cluster, issuer))
    docs = []
    for i, url in enumerate(cluster.urls):  # both the `serve --role verifier` node and the standalone app
        path = tmp_path / f"verifier{i}.evidence.json"
        path.write_text(json.dumps(httpx.get(url + "/specguard/v1/attestation", timeout=10).json()))
        docs.append(path)
    named = sorted(v["vote"]["verifier"]["attestation_digest"] for v in cert["votes"])
    assert named == sorted(load_document(p).digest() for p in docs)
    verified = verify_certificate(cert, receipt["envelope"], cluster.keys, 3)
    dev = policy_from_dict({"name": "t", "attestation": {"allow_simulated": True}})
    attested = check_verifier_evidence(verified, docs, dev)
    assert sorted(a["key_id"] for a in attested) == sorted(verified.accepted_by)
    assert all(a["simulated"] for a in attested)  # no TEE here: simulated, and labelled so
    with pytest.raises(ValidationError):  # the strict preset refuses simulated evidence
        check_verifier_evidence(verified, docs[:1], load_policy("strict"))
    stranger = collect_evidence(load_or_create_node_key(tmp_path / "stranger").public_bytes, b"n" * 32,
                                allow_simulated=True)
    with pytest.raises(QuorumError, match="not named by any accepting vote"):
        check_verifier_evidence(verified, [stranger], dev)
    # the policy can require attested verifiers; `specguard verify` passes --verifier-evidence files here
    statement = json.loads(base64.b64decode(receipt["envelope"]["payload"]))
    require = policy_from_dict({"name": "t", "attestation": {"allow_simulated": True},
                                "consensus": {"min_attested_verifiers": 4}})
    options = VerifyOptions(verifier_keys=tuple(cluster.keys), envelope=receipt["envelope"], policy=require)
    out = plugin.verify_evidence("consensus", cert, statement, dataclasses.replace(options, verifier_evidence=tuple(docs)))
    assert len(out["attested_verifiers"]) == 4
    with pytest.raises(PolicyError, match="too few accepting verifiers"):
        plugin.verify_evidence("consensus", cert, statement, dataclasses.replace(options, verifier_evidence=tuple(docs[:3])))


def test_serving_node_attaches_a_certificate(cluster):
    r = httpx.post(cluster.serving.url + "/v1/completions", timeout=60,
                   json={"model": "tiny", "prompt": "<5> <9> <17> <30>", "max_tokens": 12})
    assert r.status_code == 200, r.text
    sg = r.json()["specguard"]
    cert = sg["consensus"]
    assert cert["certified"] and cert["accepts"] == 4, cert
    ok = verify_certificate(cert, sg["receipt"]["envelope"], cluster.keys, 3)
    assert len(ok.accepted_by) == 4
    # `specguard verify` walks the certificate attached to the receipt as its last layer
    from specguard.attest.options import VerifyOptions
    from specguard.attest.receipts import EvidenceError, verify_receipt
    from specguard.plugins.receipts.cli import hook_evidence_verifier

    body = r.json()
    full = verify_receipt(sg["receipt"], VerifyOptions(verifier_keys=tuple(cluster.keys), quorum=3, allow_unpinned=True),
                          response=body, evidence_verifier=hook_evidence_verifier)
    assert any(layer["layer"] == "attachment:consensus" and layer["status"] == "ok" for layer in full.layers)
    with pytest.raises(EvidenceError, match="no quorum") as failed:
        verify_receipt(sg["receipt"], VerifyOptions(verifier_keys=tuple(cluster.keys[:2]), quorum=3, allow_unpinned=True),
                       response=body, evidence_verifier=hook_evidence_verifier)
    assert failed.value.exit_code == 14


@pytest.mark.parametrize("behaviour, outcome", [
    ("slow", "no answer"), ("always-reject", "dissent"), ("wrong-key", "not a trusted verifier key")])
def test_one_faulty_verifier_still_certifies(cluster, issuer, behave, behaviour, outcome):
    behave(3, behaviour)
    cert, receipt = certify(cluster, issuer, honest(cluster, issuer))
    assert cert["certified"] and cert["accepts"] == 3
    if outcome == "dissent":
        assert [d["verdict"] for d in cert["dissent"]] == [REJECT]
        assert cert["dissent"][0]["key_id"] == load_or_create_node_key(cluster.root / "verifier3").key_id
        assert len(verify_certificate(cert, receipt["envelope"], cluster.keys, 3).dissent) == 1
    else:
        assert [f["verifier"] for f in cert["failures"]] == [cluster.urls[3]]
        assert outcome in cert["failures"][0]["error"] or "timed out" in cert["failures"][0]["error"]


def test_replayed_votes_rejected(cluster, issuer, behave):
    behave(3, "replay")
    first, _ = certify(cluster, issuer, honest(cluster, issuer))
    assert first["accepts"] == 4  # the replayer's first vote is fresh; it keeps it to replay later
    second, receipt = certify(cluster, issuer, honest(cluster, issuer, request(16, temperature=0.7, seed=5)))
    assert second["certified"] and second["accepts"] == 3
    assert "replayed" in second["failures"][0]["error"]
    # pasting the old vote into the new certificate does not add a vote either
    forged = copy.deepcopy(second)
    forged["votes"] = second["votes"][:2] + [first["votes"][3]]
    with pytest.raises(QuorumError, match="2 valid accepting"):
        verify_certificate(forged, receipt["envelope"], cluster.keys, 3)


def test_forged_votes_rejected(cluster, issuer):
    cert, receipt = certify(cluster, issuer, honest(cluster, issuer))
    forged = copy.deepcopy(cert)
    for v in forged["votes"][1:]:
        v["vote"]["stats"]["output_tokens"] = 1  # any change breaks the signature
    with pytest.raises(QuorumError, match="1 valid accepting") as err:
        verify_certificate(forged, receipt["envelope"], cluster.keys, 3)
    assert "does not verify" in err.value.message


def test_tampered_token_not_certified_and_dissent_says_why(cluster, issuer):
    cert, receipt = certify(cluster, issuer, tamper(cluster, issuer, honest(cluster, issuer), 6))
    assert not cert["certified"] and cert["accepts"] == 0 and len(cert["dissent"]) == 4
    for d in cert["dissent"]:
        assert any("output_ids[6]" in r for r in d["reasons"]), d["reasons"]
    with pytest.raises(QuorumError, match="no quorum"):
        verify_certificate(cert, receipt["envelope"], cluster.keys, 3)


@pytest.mark.parametrize("substitute", [round_to_4_bits, drop_two_layers])
def test_substituted_model_not_certified(cluster, issuer, substitute):
    cert, _ = certify(cluster, issuer, lying_node(cluster, issuer, substitute))
    assert not cert["certified"] and cert["accepts"] == 0
    reasons = " ".join(r for d in cert["dissent"] for r in d["reasons"])
    assert "not the target's choice" in reasons or "logprob" in reasons


def test_two_liars_cannot_certify_a_wrong_response(cluster, issuer, behave):
    behave(2, "always-accept")
    behave(3, "always-accept")
    cert, receipt = certify(cluster, issuer, tamper(cluster, issuer, honest(cluster, issuer), 3), q=3)
    assert not cert["certified"] and cert["accepts"] == 2
    assert {d["verdict"] for d in cert["dissent"]} == {REJECT}
    with pytest.raises(QuorumError, match="2 valid accepting"):
        verify_certificate(cert, receipt["envelope"], cluster.keys, 3)


def test_judge_hook_and_policy_on_no_quorum(cluster, issuer, tmp_path):
    def node(on_no_quorum: str) -> SimpleNamespace:
        policy = policy_from_dict({"name": "t", "consensus": {
            "verifier_keys": [k.hex() for k in cluster.keys], "on_no_quorum": on_no_quorum,
            "timeout_seconds": TIMEOUT}})
        return SimpleNamespace(role="serve", policy=policy, home=tmp_path,
                               consensus={"verifiers": list(cluster.urls), "quorum": 3})

    good = honest(cluster, issuer)

    def judge(served: Served, on_no_quorum: str) -> dict:
        return plugin.judge_transcript(transcript=served.transcript, receipt=served.receipt, node=node(on_no_quorum),
                                       request=served.request, response=served.response)

    out = judge(good, "fail")
    assert out["consensus"]["certified"] and good.receipt["consensus"] is out["consensus"]
    bad = tamper(cluster, issuer, good, 2)
    flagged = judge(bad, "flag")
    assert not flagged["consensus"]["certified"]
    with pytest.raises(ConsensusWithheldError, match="not the target's choice"):
        judge(bad, "withhold")
    with pytest.raises(NoQuorumError) as err:
        judge(bad, "fail")
    assert err.value.http_status == 503


def test_cli_check_and_verify_certificate(cluster, issuer, tmp_path):
    served = honest(cluster, issuer)
    (tmp_path / "r.json").write_text(json.dumps(served.receipt))
    (tmp_path / "t.json").write_text(json.dumps(served.transcript.to_json()))
    (tmp_path / "req.json").write_text(json.dumps(served.request))
    (tmp_path / "resp.json").write_text(json.dumps(served.response))
    key_args = [a for k in cluster.keys for a in ("--verifier-key", k.hex())]
    url_args = [a for u in cluster.urls for a in ("--verifier", u)]
    runner = CliRunner()
    res = runner.invoke(consensus_cli.consensus_group, ["check", str(tmp_path / "r.json"), "--transcript",
                                                 str(tmp_path / "t.json"), "--request", str(tmp_path / "req.json"),
                                                 "--response", str(tmp_path / "resp.json"), "--quorum", "3",
                                                 "--timeout", "5",
                                                 "--attach", str(tmp_path / "rc.json"), *url_args, *key_args])
    assert res.exit_code == 0, res.output
    res = runner.invoke(consensus_cli.consensus_group, ["verify-certificate", str(tmp_path / "rc.json"), "--quorum", "4",
                                                 *key_args])
    assert res.exit_code == 0, res.output
    res = runner.invoke(consensus_cli.consensus_group, ["verify-certificate", str(tmp_path / "rc.json"),
                                                 "--verifier-key", cluster.keys[0].hex()])
    assert isinstance(res.exception, QuorumError)
    # `specguard verify --verifier-evidence`: a policy needing 4 attested verifiers gets 4 documents, then 3
    from specguard.plugins.receipts.cli import verify_command

    evidence = []
    for i, url in enumerate(cluster.urls):
        path = tmp_path / f"v{i}.evidence.json"
        path.write_text(json.dumps(httpx.get(url + "/specguard/v1/attestation", timeout=10).json()))
        evidence += ["--verifier-evidence", str(path)]
    policy = tmp_path / "attested-verifiers.toml"
    policy.write_text('name = "t"\n[attestation]\nallow_simulated = true\n[consensus]\nmin_attested_verifiers = 4\n')
    args = [str(tmp_path / "rc.json"), "--quorum", "3", "--policy", str(policy), *key_args,
            "--trusted-key", issuer.key.public_hex]
    res = runner.invoke(verify_command, [*args, *evidence, "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["evidence"]["attachment:consensus"]["attested_verifiers"]) == 4
    res = runner.invoke(verify_command, [*args, *evidence[:6]])
    assert isinstance(res.exception, PolicyError) and "too few accepting verifiers" in str(res.exception)
    assert res.exception.exit_code == 5  # a policy (validation) failure, not a signature failure


def test_verifier_down_still_certified(cluster, issuer):
    cluster.procs[3].kill9()
    cert, _ = certify(cluster, issuer, honest(cluster, issuer))
    assert cert["certified"] and cert["accepts"] == 3
    assert cert["failures"][0]["verifier"] == cluster.urls[3] and "unreachable" in cert["failures"][0]["error"]
    assert {parse["vote"]["verdict"] for parse in cert["votes"]} == {ACCEPT}
