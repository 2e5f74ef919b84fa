"""The consensus verifier as a Ray Serve pool (specguard.consensus.ray_pool).

A local Ray cluster (2 CPUs, 127.0.0.1) runs the pool with two replicas of a tiny real-tokenizer
model, behind Serve's HTTP proxy on a free loopback port. The plain verifier
(`verifier_app.create_app`, in-process) judges the same requests with the same node key. The pool
must answer exactly as the plain verifier does: the same vote content (everything but the
signing time and the measured seconds), signed by the deployment key, the same reject reasons for
a tampered response and the same 400 for a malformed request. Replicas never create or receive
a key: they load the deployment's file or refuse to start.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from support.consensus_node import answer, generate, respond
from support.servers import free_port, make_tiny_model_dir

from specguard.attest.receipts import ReceiptIssuer
from specguard.consensus import ray_pool
from specguard.consensus.quorum import KEY_PATH, VERIFY_PATH
from specguard.consensus.rederive import ACCEPT, REJECT
from specguard.consensus.verifier_app import VerifierNode, create_app
from specguard.consensus.vote import verify_vote
from specguard.errors import ConfigError
from specguard.keys import load_or_create_node_key
from specguard.models import load_model
from specguard.policies import load_policy

pytestmark = pytest.mark.ray

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Name two prime numbers."}], "max_tokens": 10,
        "temperature": 0, "logprobs": True, "top_logprobs": 2}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


@pytest.fixture(scope="module")
def pool(ray_cluster, tmp_path_factory):
    """The pool (2 replicas, one key) on 127.0.0.1 and the plain verifier with the same key."""
    import torch
    from ray import serve
    from support.asgi import app_client

    root = tmp_path_factory.mktemp("pool")
    model_dir = make_tiny_model_dir(root / "model", seed=3)
    home = root / "verifier"
    key = load_or_create_node_key(home)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # the replicas use the test process's torch thread count, so their fp32 sums match the plain verifier's
    settings = {"model": str(model_dir), "home": str(home), "key_id": key.key_id,
                "threads": torch.get_num_threads()}
    serve.run(ray_pool.build_pool(settings, min_replicas=2, max_replicas=2, cpus_per_replica=1),
              name=ray_pool.APP_NAME, route_prefix="/")
    model = load_model(str(model_dir))
    plain = app_client(create_app(VerifierNode(model, load_policy("dev"), home)))
    issuer = ReceiptIssuer(root / "node", load_or_create_node_key(root / "node"))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
    try:
        yield SimpleNamespace(http=http, plain=plain, key=key, model=model, issuer=issuer, settings=settings)
    finally:
        http.close()
        issuer.close()
        serve.delete(ray_pool.APP_NAME)


def comparable(vote: dict) -> dict:
    """A vote's content without what differs between two honest signings: the time, the measured
    seconds and the digest of the answering process's own (here SIMULATED, time-stamped) TEE
    evidence, which every replica collects for itself (docs/scaling.md)."""
    body = copy.deepcopy(vote["vote"])
    body.pop("issued_at")
    body["stats"].pop("score_seconds", None)
    assert body["verifier"].pop("attestation_digest").startswith("sha256:")
    return body


def public_info(reply: httpx.Response) -> dict:
    info = reply.json()
    assert info.pop("attestation_digest").startswith("sha256:")
    return info


def both(pool, body: dict) -> tuple[httpx.Response, httpx.Response]:
    return pool.plain.post(VERIFY_PATH, json=body), pool.http.post(VERIFY_PATH, json=body)


def test_pool_votes_equal_the_plain_verifier_and_are_signed_by_the_deployment_key(pool):
    served = respond(pool.model, pool.issuer, CHAT)
    info = public_info(pool.http.get(KEY_PATH))
    assert info == public_info(pool.plain.get(KEY_PATH))
    assert info["public_key"] == pool.key.public_hex
    bodies = [served.verify_body(f"{i:032x}") for i in range(4)]
    with ThreadPoolExecutor(4) as ex:  # concurrent requests: both replicas may serve them
        replies = list(ex.map(lambda b: pool.http.post(VERIFY_PATH, json=b), bodies))
    for body, reply in zip(bodies, replies, strict=True):
        assert reply.status_code == 200, reply.text
        expected = pool.plain.post(VERIFY_PATH, json=body)
        assert expected.status_code == 200
        assert comparable(reply.json()) == comparable(expected.json())
        vote = verify_vote(reply.json(), [pool.key.public_bytes])
        assert vote.body["verdict"] == ACCEPT and vote.body["nonce"] == body["nonce"]


def test_pool_rejects_a_tampered_response_as_the_plain_verifier_does(pool):
    request_obj, transcript = generate(pool.model, CHAT)
    honest = answer(pool.model, pool.issuer, request_obj, transcript)
    forged = copy.deepcopy(honest.response)
    forged["choices"][0]["message"]["content"] = "Two primes: 4 and 9."
    # a compromised node signs a receipt over the body it changed
    tampered = type(honest)(honest.transcript, pool.issuer.issue(honest.transcript, request_obj, forged, {},
                                                                 load_policy("dev")), request_obj, forged)
    # and a body changed after signing
    swapped = type(honest)(honest.transcript, honest.receipt, request_obj, forged)
    for served, reason in ((tampered, "differs from the decoding of the output ids"),
                           (swapped, "response_digest")):
        plain, ray_reply = both(pool, served.verify_body("ab" * 16))
        assert plain.status_code == ray_reply.status_code == 200, ray_reply.text
        assert comparable(ray_reply.json()) == comparable(plain.json())
        vote = verify_vote(ray_reply.json(), [pool.key.public_bytes])
        assert vote.body["verdict"] == REJECT
        assert any(reason in r for r in vote.body["reasons"]), vote.body["reasons"]


def test_pool_refuses_malformed_requests_as_the_plain_verifier_does(pool):
    served = respond(pool.model, pool.issuer, CHAT)
    bad_nonce = served.verify_body("not-hex")
    no_receipt = {k: v for k, v in served.verify_body("cd" * 16).items() if k != "receipt"}
    for body in (bad_nonce, no_receipt):
        plain, ray_reply = both(pool, body)
        assert plain.status_code == ray_reply.status_code == 400
        assert ray_reply.json() == plain.json()
    raw = pool.http.post(VERIFY_PATH, content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_replicas_load_the_deployment_key_or_refuse_to_start(tmp_path):
    home = tmp_path / "home"
    with pytest.raises(ConfigError, match="not on this Ray node"):
        ray_pool.load_pool_key(home, "ed25519:0000000000000000")
    assert not (home / "keys" / "node.key").exists()  # a replica never mints a key of its own
    key = load_or_create_node_key(home)
    assert ray_pool.load_pool_key(home, key.key_id).public_bytes == key.public_bytes
    other = load_or_create_node_key(tmp_path / "other")
    with pytest.raises(ConfigError, match="another node key") as err:
        ray_pool.load_pool_key(home, other.key_id)
    assert err.value.got == key.key_id and err.value.expected == other.key_id
    os.chmod(home / "keys" / "node.key", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        ray_pool.load_pool_key(home, key.key_id)


def test_no_secret_reaches_the_serve_config(tmp_path):
    key = load_or_create_node_key(tmp_path)
    with pytest.raises(ConfigError, match="unknown verifier pool argument"):
        ray_pool.pool_settings({"home": str(tmp_path), "key_id": key.key_id, "private_key": "x"})
    with pytest.raises(ConfigError, match="'key_id' is required"):
        ray_pool.pool_settings({"home": str(tmp_path)})
    app = ray_pool.build_pool({"home": str(tmp_path), "key_id": key.key_id})
    shipped = pickle.dumps((app._bound_deployment.init_args, app._bound_deployment.init_kwargs))
    pem = (tmp_path / "keys" / "node.key").read_bytes()
    secret = key.private.private_bytes_raw()
    assert pem not in shipped and secret not in shipped and secret.hex().encode() not in shipped
    assert key.key_id.encode() in shipped  # only the public identity and the path travel


def test_the_documented_serve_config_is_valid(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    yaml = pytest.importorskip("yaml")
    block = re.search(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert block, "docs/scaling.md has no ```yaml block"
    config = ServeDeploySchema.model_validate(yaml.safe_load(block.group(1)))
    (app,) = config.applications
    assert app.import_path == "specguard.consensus.ray_pool:app_builder"
    (deployment,) = app.deployments
    assert deployment.name == ray_pool.DEPLOYMENT_NAME
    assert deployment.autoscaling_config["target_ongoing_requests"] >= 1
    key = load_or_create_node_key(tmp_path)
    args = dict(app.args, home=str(tmp_path), key_id=key.key_id)
    assert ray_pool.app_builder(args)._bound_deployment.init_args[0]["home"] == str(tmp_path)
