"""Issue 20 §4, verifiers: whose receipts a verifier judges, how often, and how much work one client buys.

The attack: a verifier with default settings judged receipts signed by anyone, so two 658 KiB
requests signed with the attacker's own key delayed an honest vote to 42 s. Outside `dev` a
verifier now refuses to start without an allow-list; each receipt is scored at most once (a repeat
is a fresh signature over the new nonce); and every client has a work budget in model tokens.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from support.consensus_node import respond
from support.servers import make_tiny_model_dir

from specguard.consensus import service as service_module
from specguard.consensus.admission import VerifyAdmission
from specguard.consensus.quorum import new_nonce
from specguard.consensus.ratelimit import RateLimitedError, TokenBuckets
from specguard.consensus.service import VerifierService
from specguard.consensus.vote import verify_vote
from specguard.errors import ConfigError
from specguard.keys import load_or_create_node_key
from specguard.models import load_model
from specguard.policies.model import policy_from_dict

PRODUCTION = {"name": "prod", "attestation": {"required": False}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from specguard.attest.receipts import ReceiptIssuer

    root = tmp_path_factory.mktemp("allowlist")
    model_dir = make_tiny_model_dir(root / "model", seed=3, context=512)
    node_key = load_or_create_node_key(root / "node")
    issuer = ReceiptIssuer(root / "node", node_key)
    model = load_model(str(model_dir))
    served = respond(model, issuer, {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6,
                                     "temperature": 0})
    other = respond(model, issuer, {"model": "tiny", "prompt": "A second story", "max_tokens": 6, "temperature": 0})
    try:
        yield SimpleNamespace(root=root, model_dir=model_dir, model=model, node_key=node_key, served=served,
                              other=other, verifier_key=load_or_create_node_key(root / "verifier"))
    finally:
        issuer.close()


def _node(env, policy, allowed=None):
    consensus = {} if allowed is None else {"allowed_nodes": allowed}
    return SimpleNamespace(model=env.model, policy=policy, node_key=env.verifier_key, consensus=consensus,
                           attestation_digest="")


def _service(env) -> VerifierService:
    service = VerifierService.for_node(_node(env, policy_from_dict(PRODUCTION), [env.node_key.public_hex]))
    service.attestation_digest = None  # no TEE evidence in this test
    return service


def test_a_verifier_outside_dev_needs_an_allow_list(env):
    with pytest.raises(ConfigError) as err:
        VerifierService.for_node(_node(env, policy_from_dict(PRODUCTION)))
    assert err.value.field == "consensus.allowed_nodes" and "allow-list" in err.value.message
    # with one it starts; under dev it starts open (and says so in its log)
    assert VerifierService.for_node(_node(env, policy_from_dict(PRODUCTION), [env.node_key.public_hex]))
    assert VerifierService.for_node(_node(env, policy_from_dict({"name": "dev", "attestation": {
        "allow_simulated": True}}))).allowed_nodes is None


def test_the_standalone_verifier_refuses_to_start_without_an_allow_list(env, tmp_path):
    policy = tmp_path / "prod.toml"
    policy.write_text('name = "prod"\n[attestation]\nrequired = false\n')
    proc = subprocess.run([sys.executable, "-m", "specguard.consensus.verifier_app", "--model", str(env.model_dir),
                           "--policy", str(policy), "--home", str(tmp_path / "home"), "--port", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "consensus.allowed_nodes" in proc.stderr and "allow-list" in proc.stderr


def test_each_receipt_is_scored_at_most_once(env, monkeypatch):
    calls = []
    real = service_module.judge

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(service_module, "judge", counting)
    service = _service(env)
    admission = VerifyAdmission(service, TokenBuckets(0.0, 1))
    votes = []
    for client in ("a", "b", "a", "c"):
        nonce = new_nonce()
        vote = verify_vote(admission.handle(env.served.verify_body(nonce), client), [env.verifier_key.public_bytes])
        assert vote.verdict == "accept" and vote.nonce == nonce  # a fresh signature over each nonce
        votes.append(vote)
    assert len(calls) == 1 and admission.scored == 1


def test_each_client_has_a_work_budget_in_model_tokens(env):
    t = env.served.transcript
    cost = len(t.prompt_ids) + len(t.output_ids)
    service = _service(env)
    admission = VerifyAdmission(service, TokenBuckets(rate=1e-6, burst=cost + cost // 2))
    keys = [env.verifier_key.public_bytes]
    assert verify_vote(admission.handle(env.served.verify_body(new_nonce()), "greedy"), keys).verdict == "accept"
    with pytest.raises(RateLimitedError) as err:  # new work from the same client: over its budget
        admission.handle(env.other.verify_body(new_nonce()), "greedy")
    assert err.value.http_status == 429 and "model tokens" in err.value.message and err.value.retry_after >= 1
    # another client is not affected; then a receipt already judged costs the first client no budget
    assert verify_vote(admission.handle(env.other.verify_body(new_nonce()), "patient"), keys).verdict == "accept"
    assert verify_vote(admission.handle(env.other.verify_body(new_nonce()), "greedy"), keys).verdict == "accept"
