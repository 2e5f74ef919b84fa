"""Hooks get a typed, frozen `NodeContext`; nothing probes a node for what it might have.

- no `getattr(node, ...)` / `hasattr(node, ...)` in core/ or plugins/: a field a kind of node
  lacks is a typed `X | None` on `NodeContext`, not a guess at run time;
- a serving `Node` is a NodeContext; a verifier node is one too (`NodeContext.for_verifier`);
- how a node runs requests (batched or threaded) is a `Generator` chosen once, at construction.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from support.paths import ROOT

from specguard.context import NodeContext
from specguard.policies import load_policy
from specguard.serve.generator import BatchedGenerator, Generator, ThreadedGenerator

PROBES = ("getattr", "hasattr")


def _is_node(expr: ast.expr) -> bool:
    """`node`, `self.node`, `x.node`, `ctx`, `context`: the expressions that hold a node."""
    name = expr.attr if isinstance(expr, ast.Attribute) else expr.id if isinstance(expr, ast.Name) else ""
    return name in ("node", "ctx", "context")


def _probes(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)}"
            for call in ast.walk(ast.parse(path.read_text("utf-8")))
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in PROBES
            and call.args and _is_node(call.args[0])]


def test_no_node_probes_in_core_or_plugins():
    bad = [hit for folder in ("core", "plugins") for path in sorted((ROOT / folder).rglob("*.py"))
           for hit in _probes(path)]
    assert not bad, "node probed for attributes (add a typed `X | None` field to NodeContext):\n" + "\n".join(bad)


def test_the_scan_sees_a_probe(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f(self, node):\n    return getattr(node, 'x', None), hasattr(self.node, 'y')\n", "utf-8")
    found = [hit for hit in ast.walk(ast.parse(probe.read_text("utf-8")))
             if isinstance(hit, ast.Call) and isinstance(hit.func, ast.Name) and _is_node(hit.args[0])]
    assert len(found) == 2


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    from support.tiny import tiny_model

    return NodeContext.for_verifier(tiny_model(seed=3, vocab_size=32), load_policy("dev"),
                                    tmp_path_factory.mktemp("verifier-home"), allowed_nodes=[b"\x01" * 32])


def test_a_verifier_node_is_a_frozen_node_context(verifier):
    assert verifier.role == "verifier" and verifier.receipts is None and verifier.responses is None
    assert verifier.metrics is None and verifier.served_model_name is None
    assert verifier.public_key_bytes == verifier.node_key.public_bytes and verifier.key_id.startswith("ed25519:")
    assert verifier.consensus["allowed_nodes"] == (b"\x01" * 32,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verifier.policy = load_policy("strict")  # type: ignore[misc]
    with pytest.raises(TypeError):
        verifier.consensus["allowed_nodes"] = ()  # type: ignore[index]


def test_generators_implement_the_protocol_and_say_which_they_are():
    threaded = ThreadedGenerator(lambda: None)  # type: ignore[arg-type, return-value]
    assert isinstance(threaded, Generator) and threaded.batching is False
    assert BatchedGenerator.batching is True and isinstance(BatchedGenerator(None, lambda: None), Generator)  # type: ignore[arg-type]


def test_threaded_generator_reports_an_engine_failure_as_one_error_item():
    from specguard.serve.generator import GenerationJob
    from specguard.transcript import SamplingParams

    items: list[tuple[str, object]] = []

    def broken_engine():
        raise RuntimeError("engine construction failed")

    job = GenerationJob("r1", [1, 2], SamplingParams(), lambda kind, value: items.append((kind, value)))
    ThreadedGenerator(broken_engine)._run(job)  # the body of the job's thread, run here
    assert [k for k, _ in items] == ["error"] and "construction failed" in str(items[0][1])


@pytest.mark.parametrize("batching", [True, False])
def test_a_node_runs_requests_through_the_generator_it_chose(batching, tmp_path_factory):
    """Both generators answer a request end to end; /health says which one the node chose."""
    from support.asgi import app_client
    from support.servers import make_tiny_model_dir

    from specguard.models import load_model
    from specguard.serve.app import create_app
    from specguard.serve.config import ServeConfig
    from specguard.serve.node import Node

    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-generator", context=256)
    node = Node(load_model(str(tiny)), ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("generator-home"),
                served_model_name="tiny", batching=batching, max_concurrency=2))
    try:
        assert isinstance(node, NodeContext)
        assert isinstance(node.generator, BatchedGenerator if batching else ThreadedGenerator)
        client = app_client(create_app(node))
        assert client.get("/health").json()["batching"] is batching
        resp = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4, "temperature": 0,
                                                         "messages": [{"role": "user", "content": "Hi."}]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["usage"]["completion_tokens"] >= 1 and body["specguard"]["receipt_id"]
    finally:
        node.close()
