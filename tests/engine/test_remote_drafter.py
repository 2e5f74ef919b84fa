"""The untrusted remote drafter: a real `specguard draft-serve` and hostile drafting servers
(real processes on 127.0.0.1) never change an output; failing or useless drafters are cut off."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.asgi import app_client
from support.paths import ROOT, SUPPORT
from support.servers import free_port, specguard_cmd, start_process
from support.tiny import tiny_model

from specguard.drafters.base import NoDrafter
from specguard.drafters.health import DrafterHealthRegistry, HealthPolicy, drafter_health
from specguard.drafters.ngram import NgramDrafter
from specguard.drafters.remote import RemoteDrafter
from specguard.engine.factory import make_drafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import ConfigError, RequestError, UsageError
from specguard.policies.model import policy_from_dict
from specguard.serve.draft_server import create_draft_app
from specguard.transcript import SamplingParams

SEED, VOCAB = 3, 96
PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [10, 20, 30, 40, 50, 60]]
GREEDY = SamplingParams(max_tokens=24)
SAMPLED = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=7)
HOSTILE_MODES = ("garbage", "wrong-length", "adversarial", "slow", "least-likely", "huge", "nan-probs")
# generous: on a loaded 2-core CI box a loopback draft can stall; tests about timeouts set their own
FAST = HealthPolicy(timeout_seconds=2.0, min_steps_before_judging=1000, cooldown_seconds=600)


def make_toy_model_dir(path: Path, seed: int) -> Path:
    """A Hugging Face directory holding exactly tiny_model(seed) and a word-level tokenizer ("<i>").

    Not servers.make_tiny_model_dir: the in-process target here must be the same weights as the
    drafting server's, and a 96-token vocabulary keeps the hostile servers' probability rows small."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tiny_model(seed=seed, vocab_size=VOCAB, scale=4.0).model.save_pretrained(path)
    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(VOCAB)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.Split(r"<\d+>", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=SEED, vocab_size=VOCAB, scale=4.0)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{name: base URL}: a real draft-serve drafting with the target itself, and one hostile server per mode."""
    model_dir = make_toy_model_dir(tmp_path_factory.mktemp("tiny-model"), SEED)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    specs = {}
    port = free_port()
    specs["draft-serve"] = (
        specguard_cmd("draft-serve", "--model", str(model_dir), "--drafter", "draft-model", "--draft-model", str(model_dir), "--port", str(port)),
        port,
    )
    for mode in HOSTILE_MODES:
        port = free_port()
        cmd = [sys.executable, str(SUPPORT / "hostile_drafter.py"), "--port", str(port), "--mode", mode, "--vocab-size", str(VOCAB)]
        if mode == "least-likely":
            cmd += ["--model", str(model_dir)]
        specs[mode] = (cmd, port)
    # start them all at once (each start_process waits for its own health endpoint)
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {name: pool.submit(start_process, cmd, port, env, "/v1/draft/health") for name, (cmd, port) in specs.items()}
    handles = {}
    try:
        for name, future in futures.items():
            handles[name] = future.result()
        yield {name: handle.url for name, handle in handles.items()}
    finally:
        for future in futures.values():
            if future.exception() is None:
                future.result().stop(timeout=5)


def remote(url: str, policy: HealthPolicy = FAST, registry: DrafterHealthRegistry | None = None) -> RemoteDrafter:
    """A RemoteDrafter with its own health registry unless given one (tests do not share cut-offs)."""
    return RemoteDrafter(url, fallback=NgramDrafter(), health=policy, registry=registry or DrafterHealthRegistry())


_plain: dict = {}


def plain(target, prompt, params):
    key = (tuple(prompt), params)
    if key not in _plain:
        _plain[key] = SpeculativeEngine(target, NoDrafter()).generate(prompt, params).output_ids
    return _plain[key]


def stats(url: str) -> dict:
    return httpx.get(url + "/stats", timeout=2).json()


# -- the real drafting server ------------------------------------------------------------------


def test_draft_serve_outputs_identical_and_only_new_tokens_cross_the_wire(target, servers):
    url = servers["draft-serve"]
    for prompt, params in zip(PROMPTS, (GREEDY, SAMPLED), strict=True):
        before = httpx.get(url + "/v1/draft/health").json()
        drafter = remote(url)
        transcript = SpeculativeEngine(target, drafter).generate(prompt, params)
        assert transcript.output_ids == plain(target, prompt, params)
        assert transcript.drafter == "remote" and transcript.drafter_trusted is False
        assert drafter.stats["failures"] == 0 and drafter.stats["remote_steps"] > 0
        after = httpx.get(url + "/v1/draft/health").json()
        received = after["tokens_received"] - before["tokens_received"]
        assert received <= len(prompt) + len(transcript.output_ids)
        if params.greedy:
            # drafting with the target itself: greedy proposals are accepted
            assert sum(s.accepted for s in transcript.steps) > len(transcript.output_ids) // 2
    assert httpx.get(url + "/v1/draft/health").json()["sessions"] == 0  # finish() deleted them


# -- hostile drafting servers ------------------------------------------------------------------


@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_hostile_drafter_cannot_change_outputs(target, servers, mode):
    # judged after 8 steps, as a server would: hostile drafters that waste steps get cut off
    # 1 s: the slow server (3 s) always times out, the others answer in milliseconds even on a loaded box
    policy = HealthPolicy(timeout_seconds=1.0, min_acceptance_rate=0.1, min_steps_before_judging=8, cooldown_seconds=600)
    registry = DrafterHealthRegistry()
    for params in (GREEDY, SAMPLED):
        drafter = remote(servers[mode], policy, registry)
        transcript = SpeculativeEngine(target, drafter).generate(PROMPTS[0], params)
        assert transcript.output_ids == plain(target, PROMPTS[0], params), mode
        assert transcript.finish_reason == "length"
        if params.greedy:
            assert drafter.stats["remote_steps"] + drafter.stats["failures"] > 0, "the hostile server was consulted"
            if mode in ("garbage", "wrong-length"):
                assert any(s.rejected_proposal for s in transcript.steps), "the engine saw and dropped hostile proposals"
            if mode in ("slow", "huge"):
                assert drafter.stats["failures"] > 0 and drafter.stats["fallback_steps"] > 0
    if mode in ("garbage", "wrong-length", "slow", "least-likely", "huge"):
        assert registry.snapshot()[servers[mode]]["state"] == "cut-off"


def test_dead_drafter_keeps_serving_and_is_cut_off(target):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    drafter = remote(url, HealthPolicy(timeout_seconds=0.5, cooldown_seconds=600, max_consecutive_failures=3))
    for params in (GREEDY, SAMPLED):
        transcript = SpeculativeEngine(target, drafter).generate(PROMPTS[1], params)
        assert transcript.output_ids == plain(target, PROMPTS[1], params)
    assert drafter.stats["failures"] == 3, "after 3 consecutive failures the URL is not contacted"
    state = drafter.registry.snapshot()[url]
    assert state["state"] == "cut-off" and state["cutoffs"] == 1 and "consecutive failures" in state["last_cutoff_reason"]


def test_low_acceptance_drafter_is_cut_off_and_not_contacted(target, servers):
    url = servers["least-likely"]
    policy = HealthPolicy(timeout_seconds=2.0, min_acceptance_rate=0.5, min_steps_before_judging=4, cooldown_seconds=600)
    drafter = remote(url, policy)
    start = stats(url)
    first = SpeculativeEngine(target, drafter).generate(PROMPTS[0], GREEDY)
    assert first.output_ids == plain(target, PROMPTS[0], GREEDY)
    mid = stats(url)
    assert mid["propose"] - start["propose"] == 4, "judged after exactly min_steps_before_judging steps"
    state = drafter.registry.snapshot()[url]
    assert state["state"] == "cut-off" and state["accepted"] == 0 and "acceptance rate" in state["last_cutoff_reason"]
    second = SpeculativeEngine(target, drafter).generate(PROMPTS[1], GREEDY)
    assert second.output_ids == plain(target, PROMPTS[1], GREEDY)
    assert stats(url) == mid, "a cut-off drafter is not contacted at all"
    assert drafter.stats["fallback_steps"] > 0


def test_probs_from_a_remote_drafter_are_ignored(target, servers):
    for mode in ("adversarial", "nan-probs"):
        drafter = remote(servers[mode])
        drafter.start(PROMPTS[0], GREEDY)
        try:
            raw = httpx.post(servers[mode] + "/v1/draft/sessions", json={"prompt_ids": PROMPTS[0]}).json()
            sent = httpx.post(servers[mode] + f"/v1/draft/sessions/{raw['session']}/propose", json={"append": [], "rollback_to": len(PROMPTS[0]), "k": 3}).json()
            assert "probs" in sent, "the hostile server does send probabilities"
            proposal = drafter.propose(list(PROMPTS[0]), 3)
            assert proposal.tokens == sent["tokens"] and proposal.probs is None
        finally:
            drafter.finish()
    # and an untrusted drafter can never take part in speculative-sampling mode
    spec = SamplingParams(max_tokens=8, temperature=1.0, seed=1, mode="speculative-sampling")
    with pytest.raises(RequestError, match="trusted local drafter"):
        SpeculativeEngine(target, remote(servers["adversarial"])).generate(PROMPTS[0], spec)


def test_seed_is_never_sent_to_the_drafter(target):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(500)

    drafter = remote("http://drafter.invalid:9")
    drafter.start(PROMPTS[0], SAMPLED)
    drafter._client = httpx.Client(transport=httpx.MockTransport(handler))
    assert drafter.propose(list(PROMPTS[0]), 3).tokens == NgramDrafter().propose(list(PROMPTS[0]), 3).tokens
    drafter.finish()
    assert seen and all(b"seed" not in body and b"stop" not in body for body in seen)


# -- the factory, the health registry, the drafting server's input checks -------------------------


def test_factory_reads_policy_and_fallback(target):
    policy = policy_from_dict({"name": "t", "drafter": {"timeout_seconds": 0.25, "min_acceptance_rate": 0.2, "cooldown_seconds": 5}})
    drafter = make_drafter("remote", target, {"drafter_url": "http://127.0.0.1:1/", "policy": policy, "fallback": "none"})
    assert isinstance(drafter, RemoteDrafter) and drafter.trusted is False
    assert drafter.health.timeout_seconds == 0.25 and drafter.health.min_acceptance_rate == 0.2
    assert drafter.fallback.name == "none" and drafter.url == "http://127.0.0.1:1"
    assert make_drafter("remote", target, {"drafter_url": "http://127.0.0.1:1"}).fallback.name == "ngram"
    with pytest.raises(UsageError, match="drafter-url"):
        make_drafter("remote", target, {})
    with pytest.raises(UsageError, match="local drafter"):
        make_drafter("remote", target, {"drafter_url": "http://127.0.0.1:1", "fallback": "remote"})
    with pytest.raises(UsageError, match="http"):
        make_drafter("remote", target, {"drafter_url": "file:///etc/passwd"})
    with pytest.raises(ConfigError, match="drafter.timeout_seconds"):
        HealthPolicy.from_policy(policy_from_dict({"drafter": {"timeout_seconds": "fast"}}))
    assert isinstance(drafter_health(), dict)


def test_health_registry_cooldown_expires_and_redacts_credentials():
    now = [100.0]
    registry = DrafterHealthRegistry(clock=lambda: now[0])
    policy = HealthPolicy(min_acceptance_rate=0.5, min_steps_before_judging=2, cooldown_seconds=30)
    url = "http://user:secret@drafter.example:8100"
    registry.record_step(url, 4, 4, policy)
    registry.record_step(url, 4, 0, policy)  # 4/8 = 0.5: not below the floor, window restarts
    assert registry.available(url)
    registry.record_step(url, 4, 1, policy)
    registry.record_step(url, 4, 0, policy)  # 1/8 < 0.5
    assert not registry.available(url)
    snap = registry.snapshot()
    assert list(snap) == ["http://drafter.example:8100"] and "secret" not in str(snap)
    assert snap["http://drafter.example:8100"]["cooldown_remaining_seconds"] == 30
    now[0] += 31
    assert registry.available(url) and registry.snapshot()["http://drafter.example:8100"]["state"] == "ok"
    for _ in range(2):
        registry.record_failure(url, "refused", policy)
    registry.record_success(url)
    registry.record_failure(url, "refused", policy)
    assert registry.available(url), "failures must be consecutive"


def test_draft_server_validates_input_and_bounds_sessions(target):
    now = [0.0]
    app = create_draft_app(target, "ngram", {}, max_sessions=2, idle_seconds=10, clock=lambda: now[0])
    client = app_client(app)
    sid = client.post("/v1/draft/sessions", json={"prompt_ids": [1, 2, 3, 1, 2], "params": {"seed": 5}}).json()["session"]
    r = client.post(f"/v1/draft/sessions/{sid}/propose", json={"append": [], "rollback_to": 5, "k": 2})
    assert r.status_code == 200 and r.json() == {"tokens": [3, 1]}
    r = client.post(f"/v1/draft/sessions/{sid}/propose", json={"append": [3], "rollback_to": 5, "k": 4})
    assert r.json() == {"tokens": [1, 2, 3]}
    bad = [
        ({"append": [VOCAB], "rollback_to": 0, "k": 1}, 400),
        ({"append": [-1], "rollback_to": 0, "k": 1}, 400),
        ({"append": ["1"], "rollback_to": 0, "k": 1}, 400),
        ({"append": [1.5], "rollback_to": 0, "k": 1}, 400),
        ({"append": [], "rollback_to": 99, "k": 1}, 409),
        ({"append": [], "rollback_to": 0, "k": 1}, 400),
        ({"append": [], "rollback_to": 1, "k": 10_000}, 400),
        ({"append": [], "rollback_to": 1, "k": 1, "extra": 1}, 400),
    ]
    for body, status in bad:  # validation errors are 400 in OpenAI's error shape (the common server base)
        resp = client.post(f"/v1/draft/sessions/{sid}/propose", json=body)
        assert resp.status_code == status, body
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}, body
    assert client.post("/v1/draft/sessions", json={"prompt_ids": []}).status_code == 400
    assert client.post("/v1/draft/sessions/nope/propose", json={"rollback_to": 0, "k": 1}).status_code == 404
    others = [client.post("/v1/draft/sessions", json={"prompt_ids": [1]}).json()["session"] for _ in range(2)]
    assert client.get("/v1/draft/health").json()["sessions"] == 2  # the oldest was evicted
    assert client.post(f"/v1/draft/sessions/{sid}/propose", json={"rollback_to": 1, "k": 1}).status_code == 404
    now[0] += 11
    assert client.get("/v1/draft/health").json()["sessions"] == 0  # idle sessions expired
    assert client.delete(f"/v1/draft/sessions/{others[0]}").json() == {"deleted": False}
    with pytest.raises(UsageError):
        create_draft_app(target, "remote", {})


def test_client_recreates_an_evicted_session(target):
    app = create_draft_app(target, "ngram", {}, max_sessions=1)
    client = app_client(app)
    drafter = remote("http://testserver")
    drafter.start(PROMPTS[0], GREEDY)
    drafter._client = client  # a plain httpx.Client speaking to the app in-process
    assert drafter.propose(list(PROMPTS[0]), 2).tokens == [4, 5]
    client.post("/v1/draft/sessions", json={"prompt_ids": [9]})  # evicts the drafter's session
    context = PROMPTS[0] + [4, 5]
    assert drafter.propose(context, 2).tokens == NgramDrafter().propose(context, 2).tokens
    assert drafter.stats["failures"] == 0 and drafter.stats["remote_steps"] == 2
    drafter.finish()


# -- the draft cap: the server advertises max_draft, the client takes min(advertised, 32) ---------


def scripted_server(max_draft, seen: list):
    """An in-memory drafting server answering session creation with `max_draft` (None: absent, as
    servers before it did) and every propose with as many tokens as asked; records the k asked."""
    import json as _json

    def handler(request: httpx.Request) -> httpx.Response:
        body = _json.loads(request.content or b"{}")
        if request.url.path == "/v1/draft/sessions":
            answer = {"session": "s1"}
            if max_draft is not None:
                answer["max_draft"] = max_draft
            return httpx.Response(200, json=answer)
        if request.url.path.endswith("/propose"):
            seen.append(body["k"])
            return httpx.Response(200, json={"tokens": [1] * body["k"]})
        return httpx.Response(200, json={"deleted": True})

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("advertised", "cap"), [(None, 12), (8, 8), (32, 32), (1000, 32), (1 << 62, 32)])
def test_client_asks_for_at_most_min_of_advertised_and_its_own_cap(advertised, cap):
    seen: list[int] = []
    drafter = remote("http://drafter.invalid:9")
    assert drafter.max_draft == 32  # the engine's draft length may grow to 32 with a remote drafter
    drafter.start(PROMPTS[0], GREEDY)
    drafter._client = scripted_server(advertised, seen)
    try:
        tokens = drafter.propose(list(PROMPTS[0]), 40).tokens
        assert seen == [cap] and len(tokens) == cap and drafter.remote_max_draft == cap
        assert drafter.propose(list(PROMPTS[0]) + tokens, 5).tokens == [1] * 5 and seen[-1] == 5
        assert drafter.stats["failures"] == 0
    finally:
        drafter.finish()


@pytest.mark.parametrize("advertised", [0, -3, True, "32", 2.5, [32]])
def test_invalid_advertised_max_draft_is_a_failure_and_the_step_falls_back(advertised):
    seen: list[int] = []
    drafter = remote("http://drafter.invalid:9")
    drafter.start(PROMPTS[0], GREEDY)
    drafter._client = scripted_server(advertised, seen)
    try:
        tokens = drafter.propose(list(PROMPTS[0]), 6).tokens
        assert tokens == NgramDrafter().propose(list(PROMPTS[0]), 6).tokens  # the local fallback drafted
        assert seen == [] and drafter.stats["failures"] == 1 and "max_draft" in drafter.stats["last_error"]
    finally:
        drafter.finish()


def test_fallback_is_asked_for_no_more_than_its_own_max_draft():
    class Recording(NgramDrafter):
        asked: list[int] = []

        def propose(self, context, k):
            self.asked.append(k)
            return super().propose(context, k)

    fallback = Recording()
    drafter = RemoteDrafter(f"http://127.0.0.1:{free_port()}", fallback=fallback, health=FAST,
                            registry=DrafterHealthRegistry())
    drafter.start(PROMPTS[0], GREEDY)
    try:
        drafter.propose(list(PROMPTS[0]), 30)
    finally:
        drafter.finish()
    assert fallback.asked == [fallback.max_draft]


def test_draft_server_advertises_its_drafters_max_draft(target):
    client = app_client(create_draft_app(target, "ngram", {}))
    assert client.get("/v1/draft/health").json()["max_draft"] == 12
    created = client.post("/v1/draft/sessions", json={"prompt_ids": [1, 2, 3]}).json()
    assert created["max_draft"] == 12 and isinstance(created["session"], str)
    ahead = app_client(create_draft_app(target, "ngram", {"draft_ahead": True}))
    assert ahead.get("/v1/draft/health").json()["draft_ahead"] is True


def test_llamacpp_behind_draft_serve_gets_drafts_of_up_to_32():
    # a random target with SmolLM2's vocabulary; the server drafts with llama.cpp on SmolLM2's GGUF
    from specguard.models import resolve

    _, gguf = resolve("smollm2-135m")
    target = tiny_model(seed=5, vocab_size=49152)
    app = create_draft_app(target, "llamacpp", {"gguf": str(gguf), "draft_ahead": True})
    client = app_client(app)
    assert client.get("/v1/draft/health").json()["max_draft"] == 32
    # loading the GGUF and drafting 32 tokens on a loaded CI box can take seconds: no step timeout here
    drafter = remote("http://testserver", HealthPolicy(timeout_seconds=600, min_steps_before_judging=1000))
    drafter.start([1, 504, 3520, 314], GREEDY)
    drafter._client = client
    try:
        assert len(drafter.propose([1, 504, 3520, 314], 40).tokens) == 32
        assert drafter.remote_max_draft == 32 and drafter.stats["failures"] == 0
    finally:
        drafter.finish()  # deletes the session: the server stops and joins its draft-ahead thread
    assert app_client(app).get("/v1/draft/health").json()["sessions"] == 0
    assert not [t for t in threading.enumerate() if t.name == "specguard-draft-ahead"]


def test_a_session_deleted_during_its_propose_is_finished_after_the_propose(target):
    from fastapi import HTTPException

    from specguard.drafters.base import Drafter, Proposal
    from specguard.serve.draft_server import CreateSession, DraftSessions, ProposeRequest

    events: list[str] = []
    entered, release = threading.Event(), threading.Event()

    class Blocking(Drafter):
        def propose(self, context, k):
            events.append("propose-start")
            entered.set()
            assert release.wait(60)
            events.append("propose-end")
            return Proposal([1])

        def finish(self):
            events.append("finish")

    sessions = DraftSessions(target, Blocking)

    sid = sessions.create(CreateSession(prompt_ids=[1, 2, 3]))
    body = ProposeRequest(append=[], rollback_to=3, k=2)
    proposer = threading.Thread(target=sessions.propose, args=(sid, body))
    proposer.start()
    assert entered.wait(60)
    deleter = threading.Thread(target=sessions.delete, args=(sid,))
    deleter.start()  # the drafter is in use: finishing it must wait for the propose to end
    deleter.join(timeout=0.5)  # give a buggy delete the chance to finish it now (passes either way when correct)
    release.set()
    proposer.join()
    deleter.join()
    assert events == ["propose-start", "propose-end", "finish"]
    with pytest.raises(HTTPException) as err:
        sessions.propose(sid, body)
    assert err.value.status_code == 404
