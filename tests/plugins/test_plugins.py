"""The plugin core: built-ins load like third-party plugins; every hook is documented and tested."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import ROOT
from support.tiny import tiny_model

from specguard import hookspecs
from specguard.drafters.base import Drafter, Proposal
from specguard.engine.factory import drafter_names, make_drafter, make_engine
from specguard.engine.speculative import SpeculativeEngine
from specguard.errors import PluginError, RequestError, UsageError
from specguard.hookspecs import hookimpl
from specguard.openai.resolved import NodeDefaults, ResolvedRequest, resolve_request
from specguard.plugin_manager import DEFAULT_PLUGINS, collect, get_plugins, load_plugins, pm
from specguard.transcript import SamplingParams

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "specguard_spec"))
SPECGUARD = str(Path(sys.executable).parent / "specguard")


def test_hook_list_is_what_we_expect():
    assert {"register_commands", "register_drafters", "register_engines", "register_evidence_types",
            "register_routes", "check_request", "on_step", "seal_transcript", "judge_transcript",
            "verify_evidence", "node_attestation", "issue_receipt"} == set(HOOKS)


def test_node_attestation_hook_feeds_receipts_and_verifier_votes(tmp_path):
    """The first plugin answering node_attestation decides what receipts and votes name."""

    from specguard.consensus.service import VerifierService
    from specguard.context import NodeContext
    from specguard.keys import load_or_create_node_key
    from specguard.plugins import attestation
    from specguard.policies import load_policy

    key = load_or_create_node_key(tmp_path)
    node = NodeContext(model=tiny_model(seed=1, vocab_size=32), policy=load_policy("dev"), home=tmp_path, node_key=key)
    load_plugins()
    builtin = VerifierService.for_node(node).attestation_digest
    assert builtin == attestation.node_evidence(node).digest()  # the built-in plugin: the node's evidence

    class FixedEvidence:
        @hookimpl(tryfirst=True)
        def node_attestation(self, node):
            return {"type": "sev-snp", "evidence_digest": "sha256:" + "ab" * 32, "simulated": False}

    pm.register(FixedEvidence(), name="fixed-evidence")
    try:
        assert VerifierService.for_node(node).attestation_digest == "sha256:" + "ab" * 32
        sealed: dict = {}
        attestation.seal_transcript(transcript=None, evidence=sealed, node=node)
        assert sealed["attestation"]["evidence_digest"] == "sha256:" + "ab" * 32
    finally:
        pm.unregister(name="fixed-evidence")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}\(", doc, re.M), f"docs/plugins.md lacks a '### {hook}(...)' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    used = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_plugins.py" and hook in p.read_text()]
    here = Path(__file__).read_text().count(f"def {hook}(")
    assert used or here, f"no test implements or calls {hook}"


def test_builtins_are_registered_as_plugins():
    load_plugins()
    names = {p["name"] for p in get_plugins()}
    assert set(DEFAULT_PLUGINS) <= names
    assert {"none", "ngram", "draft-model", "early-exit", "remote"} <= set(drafter_names())
    assert "specguard" in collect("register_engines")


def test_plugins_command_prints_json():
    out = subprocess.run([SPECGUARD, "plugins"], capture_output=True, text=True, check=True).stdout
    plugins = json.loads(out)
    by_name = {p["name"]: p for p in plugins}
    assert "register_drafters" in by_name["specguard.drafters.builtin"]["hooks"]
    assert all(p["builtin"] for p in plugins if p["name"] in DEFAULT_PLUGINS)


def test_load_plugins_env_var_restricts_and_trace_prints_calls():
    env = {**os.environ, "SPECGUARD_LOAD_PLUGINS": "builtin", "SPECGUARD_TRACE_HOOKS": "1"}
    proc = subprocess.run([SPECGUARD, "plugins"], capture_output=True, text=True, env=env, check=True)
    names = {p["name"] for p in json.loads(proc.stdout)}
    assert names == {"specguard.drafters.builtin", "specguard.engine.builtin"}
    assert "[specguard hook] register_commands" in proc.stderr


class InlinePlugin:
    """A third-party-style plugin registered in a test."""

    def __init__(self):
        self.steps = []

    @hookimpl
    def register_drafters(self, register):
        class Echo(Drafter):
            name = "echo-last"

            def propose(self, context, k):
                return Proposal([context[-1]] * k)

        register("echo-last", lambda target, options: Echo(), "repeats the last token")

    @hookimpl
    def register_engines(self, register):
        register("counting", lambda target, drafter, options: SpeculativeEngine(target, drafter, top_logprobs=0), "")

    @hookimpl
    def check_request(self, request: ResolvedRequest, policy: object) -> None:
        if request.max_tokens > 100:
            raise RequestError("too many tokens for this test plugin", field="max_tokens", got=request.max_tokens)

    @hookimpl
    def on_step(self, request, step):
        self.steps.append(step)


@pytest.fixture
def inline_plugin():
    load_plugins()
    plugin = InlinePlugin()
    pm.register(plugin, name="inline-test-plugin")
    yield plugin
    pm.unregister(name="inline-test-plugin")


def test_inline_plugin_adds_a_drafter_and_sees_requests(inline_plugin):
    lm = tiny_model(seed=3)
    drafter = make_drafter("echo-last", lm)
    assert drafter.name == "echo-last"
    assert make_engine(lm, drafter, "counting").top_logprobs == 0
    request = resolve_request(CHAT, NodeDefaults(max_tokens=8, context_length=512), prompt_tokens=2)
    pm.hook.check_request(request=request, policy=None)
    t = SpeculativeEngine(lm, drafter).generate(
        [1, 2], SamplingParams(max_tokens=8), on_step=lambda s: pm.hook.on_step(request=request, step=s)
    )
    assert len(inline_plugin.steps) == len(t.steps) > 0
    with pytest.raises(RequestError, match="too many tokens"):
        pm.hook.check_request(request=dataclasses.replace(request, max_tokens=101), policy=None)


def test_duplicate_drafter_name_is_an_error(inline_plugin):
    class Dup:
        @hookimpl
        def register_drafters(self, register):
            register("echo-last", lambda t, o: None, "")

    pm.register(Dup(), name="dup")
    try:
        with pytest.raises(PluginError, match="echo-last"):
            collect("register_drafters")
    finally:
        pm.unregister(name="dup")


def test_unknown_drafter_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown drafter"):
        make_drafter("nope", tiny_model(seed=3))
