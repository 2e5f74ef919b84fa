"""The `llamacpp` drafter (llama-cpp-python on the target's GGUF): untrusted, lossless.

`make install` builds llama-cpp-python (portable flags), so these tests do not skip: a missing
package fails them with the drafter's install hint. Outputs are compared token by token with
plain decoding of the same target; the drafter only changes how many verification steps it takes.
"""

from __future__ import annotations

import sys

import httpx
import pytest
from support.paths import ROOT
from support.servers import free_port, specguard_cmd, start_process
from support.tiny import tiny_model

from specguard.drafters.base import NoDrafter, Proposal
from specguard.drafters.health import DrafterHealthRegistry, HealthPolicy
from specguard.drafters.llamacpp import LlamaCppDrafter, target_gguf
from specguard.drafters.remote import RemoteDrafter
from specguard.engine.factory import drafter_names, make_drafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import UsageError
from specguard.transcript import SamplingParams

pytestmark = pytest.mark.model

QUESTIONS = [
    "Write a short poem about the sea.",
    "Explain what a hash function is in two sentences.",
    "List three uses of Python dictionaries.",
]
GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(default_model):
    return [default_model.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


_plain: dict = {}


def plain(target, prompt, params):
    key = (target.name, tuple(prompt), params)
    if key not in _plain:
        _plain[key] = SpeculativeEngine(target, NoDrafter()).generate(prompt, params).output_ids
    return _plain[key]


def test_llamacpp_is_installed_and_listed():
    import llama_cpp  # make install builds it; a missing package is a failure, not a skip

    assert llama_cpp.__version__ == "0.3.36"
    assert "llamacpp" in drafter_names()


def test_greedy_output_identical_to_plain_with_long_accepted_drafts(default_model, prompts):
    drafter = make_drafter("llamacpp", default_model, {"draft_ahead": False})  # the bare drafter
    assert isinstance(drafter, LlamaCppDrafter) and drafter.trusted is False
    engine = SpeculativeEngine(default_model, drafter)
    assert engine.draft_length.maximum == 32  # the drafter's max_draft, not the engine default
    accepted = steps = emitted = 0
    for prompt in prompts:
        transcript = engine.generate(prompt, GREEDY)
        assert transcript.output_ids == plain(default_model, prompt, GREEDY)
        assert transcript.drafter == "llamacpp" and transcript.drafter_trusted is False
        assert all(s.rejected_proposal is None for s in transcript.steps)
        m = transcript.metrics()
        accepted += m["accepted_tokens"]
        steps += m["steps"]
        emitted += m["output_tokens"]
    assert accepted > 0
    # llama.cpp agrees with the fp32 target on most greedy tokens: far fewer steps than tokens
    assert emitted / steps > 1.5, (emitted, steps)
    # the KV cache was reused across steps (only new tokens evaluated)
    assert drafter.counters["reused"] > 0
    assert drafter.counters["evaluated"] < drafter.counters["reused"]


def test_kv_cache_resyncs_to_the_common_prefix_after_a_rejection(default_model, prompts):
    drafter = make_drafter("llamacpp", default_model, {"draft_ahead": False})
    drafter.start(prompts[0], GREEDY)
    try:
        first = drafter.propose(list(prompts[0]), 6).tokens
        assert len(first) == 6
        lease = drafter._lease
        # the context plus all drafted tokens but the last were evaluated (in the request's pooled sequence)
        assert lease.drafting.cached(lease.seq) == list(prompts[0]) + first[:5]
        # the verifier rejected the 3rd draft token and emitted another one instead
        other = (first[2] + 1) % default_model.vocab_size
        context = list(prompts[0]) + first[:2] + [other]
        evaluated = drafter.counters["evaluated"]
        second = drafter.propose(context, 4).tokens
        assert len(second) == 4
        assert lease.drafting.cached(lease.seq) == context + second[:3]
        # only the new token and the drafted ones were evaluated: the prefix came from the cache
        assert drafter.counters["evaluated"] - evaluated == 1 + 3
    finally:
        drafter.finish()
    assert drafter._lease is None and lease.drafting.cached(lease.seq) == []  # given back to the pool, cleared


class CorruptingDrafter(LlamaCppDrafter):
    """A hostile llama.cpp drafter: every third proposed token is replaced by its neighbour id."""

    def propose(self, context, k):
        tokens = super().propose(context, k).tokens
        return Proposal([(t + 1) % 49152 if i % 3 == 2 else t for i, t in enumerate(tokens)])


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_corrupted_drafts_do_not_change_the_output(default_model, prompts, params):
    gguf = target_gguf(default_model)
    drafter = CorruptingDrafter(gguf)
    transcript = SpeculativeEngine(default_model, drafter).generate(prompts[1], params)
    assert transcript.output_ids == plain(default_model, prompts[1], params)
    drafted = sum(len(s.drafted) for s in transcript.steps)
    assert transcript.metrics()["accepted_tokens"] < drafted  # the corruption was rejected


def test_wrong_model_drafter_does_not_change_the_output():
    # a random 2-layer target with SmolLM2's vocabulary size; the drafter runs SmolLM2's GGUF
    from specguard.models import resolve

    target = tiny_model(seed=5, vocab_size=49152)
    _, gguf = resolve("smollm2-135m")
    drafter = make_drafter("llamacpp", target, {"gguf": str(gguf)})
    prompt = [1, 504, 3520, 314, 253, 1345, 30, 2]
    for params in (GREEDY, SAMPLED):
        transcript = SpeculativeEngine(target, drafter).generate(prompt, params)
        assert transcript.output_ids == plain(target, prompt, params)
        assert sum(len(s.drafted) for s in transcript.steps) > 0


def test_context_ids_outside_the_gguf_vocabulary_get_no_draft_instead_of_a_crash():
    # llama.cpp aborts the process on an out-of-range token id; a larger target vocabulary must not reach it
    from specguard.models import resolve

    _, gguf = resolve("smollm2-135m")
    target = tiny_model(seed=6, vocab_size=49152 + 64)
    drafter = make_drafter("llamacpp", target, {"gguf": str(gguf), "draft_ahead": False})
    drafter.start([1, 2], GREEDY)
    try:
        assert len(drafter.propose([1, 2, 3], 3).tokens) == 3
        assert drafter.propose([1, 2, 3, 49152 + 10], 3).tokens == []
        assert len(drafter.propose([1, 2, 3, 4], 3).tokens) == 3  # and it keeps drafting afterwards
    finally:
        drafter.finish()


def test_sampled_output_identical_and_shared_seed_raises_acceptance(default_model, prompts):
    rates = {}
    for share in (False, True):
        accepted = drafted = 0
        for prompt in prompts[:2]:
            drafter = make_drafter("llamacpp", default_model, {"share_seed": share, "draft_ahead": False})
            transcript = SpeculativeEngine(default_model, drafter).generate(prompt, SAMPLED)
            assert transcript.output_ids == plain(default_model, prompt, SAMPLED)
            accepted += transcript.metrics()["accepted_tokens"]
            drafted += transcript.metrics()["drafted_tokens"]
        rates[share] = accepted / max(drafted, 1)
    print("sampled draft acceptance without / with the seed:", rates)
    # with the seed the drafter samples with the verifier's own noise, so it agrees far more often
    assert rates[True] > rates[False], rates
    assert rates[True] > 0.5, rates


def test_options_are_checked(default_model, tmp_path):
    with pytest.raises(UsageError) as err:
        make_drafter("llamacpp", default_model, {"gguf": str(tmp_path / "missing.gguf")})
    assert err.value.field == "gguf"
    with pytest.raises(UsageError) as err:
        make_drafter("llamacpp", default_model, {"n_threads": 0})
    assert err.value.field == "n_threads"
    with pytest.raises(UsageError) as err:
        make_drafter("llamacpp", default_model, {"share_seed": "yes"})
    assert err.value.field == "share_seed"
    with pytest.raises(UsageError) as err:  # a target not loaded from a GGUF and no gguf option
        make_drafter("llamacpp", tiny_model(seed=1), {})
    assert err.value.field == "gguf"


def test_missing_package_is_a_usage_error_naming_the_install_command(default_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    assert "llamacpp" in drafter_names()
    with pytest.raises(UsageError) as err:
        make_drafter("llamacpp", default_model, {})
    assert "pip install llama-cpp-python==0.3.36" in str(err.value)
    assert "-DGGML_AMX_TILE=OFF" in str(err.value)


def test_remote_llamacpp_drafter_via_draft_serve(default_model, prompts):
    port = free_port()
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = start_process(specguard_cmd("draft-serve", "--drafter", "llamacpp", "--port", str(port)), port, env,
                           "/v1/draft/health", timeout=300)
    try:
        health = httpx.get(server.url + "/v1/draft/health", timeout=10).json()
        assert health["drafter"] == "llamacpp"
        policy = HealthPolicy(timeout_seconds=30.0, min_steps_before_judging=1000, cooldown_seconds=600)
        drafter = RemoteDrafter(server.url, fallback=NoDrafter(), health=policy, registry=DrafterHealthRegistry())
        transcript = SpeculativeEngine(default_model, drafter).generate(prompts[2], GREEDY)
        assert transcript.output_ids == plain(default_model, prompts[2], GREEDY)
        assert drafter.stats["remote_steps"] > 0 and drafter.stats["fallback_steps"] == 0
        assert transcript.metrics()["accepted_tokens"] > 0
    finally:
        server.stop(timeout=5)
