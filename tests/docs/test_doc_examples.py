"""The examples in docs/plugins.md and the README quick start run exactly as printed.

Each example block is marked `<!-- example: NAME -->` just before its ```python fence. The test
extracts the block text from the markdown, writes it to a module, imports it, registers it with
the plugin manager like an installed plugin, and drives it through a real server app (policy
hook, evidence layer) or the engine (drafter).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from support.asgi import app_client
from support.doc_blocks import blocks, example, run_sh
from support.paths import ROOT
from support.servers import make_tiny_model_dir
from support.tiny import tiny_model

from specguard.attest.receipts import EvidenceError, verify_receipt
from specguard.cli import _register_plugin_commands, cli
from specguard.engine.factory import make_drafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.models import load_model
from specguard.plugin_manager import load_plugins, pm
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node
from specguard.transcript import SamplingParams

PLUGINS_MD = ROOT / "docs" / "plugins.md"
MODEL = "tiny"


def doc_examples(path: Path = PLUGINS_MD) -> dict[str, str]:
    """{name: code} of every marked python block in `path`, verbatim."""
    return {b.marker_value: b.text for b in blocks(path) if b.marker == "example" and b.lang == "python"}


def _import_example(name: str, tmp_path: Path) -> ModuleType:
    source = tmp_path / f"doc_example_{name}.py"
    source.write_text(example("docs/plugins.md", name) + "\n", "utf-8")
    spec = importlib.util.spec_from_file_location(source.stem, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registered(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The example named by the test's `example` marker argument, registered as a plugin."""
    name = request.param
    load_plugins()
    module = _import_example(name, tmp_path)
    pm.register(module, name=f"doc-example-{name}")
    try:
        yield module
    finally:
        pm.unregister(name=f"doc-example-{name}")
        sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)
    n = Node(load_model(str(tiny)), ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("doc-home"), served_model_name=MODEL,
             max_model_len=1024, default_max_tokens=8))
    yield n
    n.close()


def _chat(node: Node, **fields: Any) -> Any:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "temperature": 0, **fields}
    with app_client(create_app(node)) as client:
        return client.post("/v1/chat/completions", json=body)


def test_every_example_is_marked_and_tested():
    assert set(doc_examples()) == {"max_tokens_policy", "repeat_drafter", "witness_layer"}
    text = PLUGINS_MD.read_text("utf-8")
    assert text.count("```python") == len(doc_examples()) + 1  # + the inline-registration sketch for tests


@pytest.mark.parametrize("registered", ["max_tokens_policy"], indirect=True)
def test_policy_example_sees_the_resolved_max_tokens(registered, node):
    """The 'minimal plugin' no longer crashes on a request without max_tokens (it saw None before),
    and max_completion_tokens no longer goes round it."""
    ok = _chat(node)
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] <= 8
    for field in ("max_tokens", "max_completion_tokens"):
        refused = _chat(node, **{field: 300})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert "at most 256 tokens" in error["message"] and error["param"] == "max_tokens"
    assert _chat(node, max_completion_tokens=256).status_code == 200


@pytest.mark.parametrize("registered", ["repeat_drafter"], indirect=True)
def test_drafter_example_is_lossless(registered):
    lm = tiny_model(seed=5)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    drafter = make_drafter("repeat-last", lm)
    assert drafter.name == "repeat-last" and drafter.cheap_drafts
    with_drafter = SpeculativeEngine(lm, drafter).generate([1, 2, 3], params)
    plain = SpeculativeEngine(lm, make_drafter("none", lm)).generate([1, 2, 3], params)
    assert with_drafter.output_ids == plain.output_ids
    assert with_drafter.drafter == "repeat-last" and with_drafter.metrics()["drafted_tokens"] > 0


def _hex_keys() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    return private, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _through_hook(slot: str, value: Any, statement: dict[str, Any], options: Any) -> Any:
    return pm.hook.verify_evidence(slot=slot, value=value, statement=statement, options=options)


@pytest.mark.parametrize("registered", ["witness_layer"], indirect=True)
def test_evidence_layer_example_end_to_end(registered, node, monkeypatch):
    private, public = _hex_keys()
    monkeypatch.setenv("WITNESS_PRIVATE_KEY", private)
    resp = _chat(node, max_tokens=6)
    assert resp.status_code == 200, resp.text
    receipt = resp.json()["specguard"]["receipt"]

    monkeypatch.setenv("WITNESS_PUBLIC_KEY", public)
    verified = verify_receipt(receipt, trusted_keys=[node.public_key_bytes], evidence_verifier=_through_hook)
    layers = {layer["layer"]: layer["status"] for layer in verified.layers}
    assert layers["evidence:witness"] == "ok"
    assert verified.evidence["witness"] == {"witness_public_key": public}

    monkeypatch.setenv("WITNESS_PUBLIC_KEY", _hex_keys()[1])  # a witness the verifier does not trust
    with pytest.raises(EvidenceError, match="witness signature does not verify"):
        verify_receipt(receipt, trusted_keys=[node.public_key_bytes], evidence_verifier=_through_hook)

    monkeypatch.delenv("WITNESS_PUBLIC_KEY")
    unchecked = verify_receipt(receipt, trusted_keys=[node.public_key_bytes], evidence_verifier=_through_hook)
    assert {layer["layer"]: layer["status"] for layer in unchecked.layers}["evidence:witness"] == "unchecked"


# --- README quick start and --help ------------------------------------------------------------

QUICKSTART_PORT = "127.0.0.1:8000"


@pytest.fixture(scope="module")
def quickstart_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`specguard serve` as the quick start runs it, on a tiny model served under the default name."""
    from support.servers import free_port, specguard_cmd, start_process

    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)
    port = free_port()
    home = tmp_path_factory.mktemp("quickstart-home")
    server = start_process(specguard_cmd("serve", "-m", str(tiny), "--served-model-name", "smollm2-135m",
                                         "--port", str(port), "--threads", "1", "--max-concurrency", "1"),
                           port, env={"SPECGUARD_HOME": str(home)}, timeout=300)
    try:
        yield server
    finally:
        server.stop()


def _run_curl_block(doc: str, name: str, server: Any, cwd: Path, env: dict[str, str] | None = None) -> Any:
    done = run_sh(example(doc, name), cwd, ports={8000: server.port}, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^OK receipt [0-9a-f]{32} signed by ", done.stdout, re.M), done.stdout
    return done


def test_readme_curl_quickstart_runs_as_printed(quickstart_server, tmp_path):
    """The curl | jq | .venv/bin/specguard verify block, with only the port replaced."""
    done = _run_curl_block("README.md", "quickstart_curl", quickstart_server, tmp_path)
    body = json.loads((tmp_path / "response.json").read_text())
    assert done.stdout.startswith(body["choices"][0]["message"]["content"])
    assert json.loads((tmp_path / "receipt.json").read_text())["receipt_id"] == body["specguard"]["receipt_id"]


def test_server_doc_curl_example_runs_as_printed(quickstart_server, tmp_path):
    done = _run_curl_block("docs/server.md", "using_it_curl", quickstart_server, tmp_path)
    body = json.loads((tmp_path / "response.json").read_text())
    assert done.stdout.startswith(json.dumps(body["choices"][0]["message"]["content"]))


def test_server_doc_stream_verification_runs_as_printed(quickstart_server, tmp_path):
    """Stream a response, then fetch its stored body and verify it, as docs/server.md prints it."""
    _run_curl_block("docs/server.md", "verify_stream", quickstart_server, tmp_path)
    chunks = [json.loads(line[len("data: "):]) for line in (tmp_path / "stream.txt").read_text().splitlines()
              if line.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert json.loads((tmp_path / "response.json").read_text())["choices"][0]["message"]["content"] == streamed


@pytest.mark.parametrize(("doc", "name"), [("README.md", "quickstart_openai"), ("docs/server.md", "using_it_openai")])
def test_openai_sdk_examples_run_as_printed(quickstart_server, capsys, doc, name):
    code = example(doc, name)
    namespace: dict[str, Any] = {}
    exec(code.replace(QUICKSTART_PORT, f"127.0.0.1:{quickstart_server.port}"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert namespace["receipt"]["receipt_id"] in printed
    assert namespace["chat"].choices[0].logprobs is not None


def test_serve_prints_each_phase_and_the_banner(quickstart_server):
    out = quickstart_server.output()
    for phase_line in ("Loading ", "Computing the model digest", "Preparing the integrity layers"):
        assert re.search(rf"specguard: {phase_line}.*: done in \d+\.\ds", out), phase_line
    for row in ("engine ", "drafter ", "threads ", "batching ", "policy ", "keys ", "log ", "auth "):
        assert re.search(rf"^  {row}\s*\S", out, re.M), row
    assert re.search(r"specguard: ready in \d+\.\ds", out)


def _walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, (*path, name))


def test_every_option_has_help_text():
    _register_plugin_commands()
    missing = [(" ".join(path), param.opts[0]) for path, command in _walk(cli, ())
               for param in command.params if isinstance(param, click.Option) and not param.help]
    assert not missing, f"options without help text: {missing}"


def test_help_lists_drafter_and_engine_names():
    _register_plugin_commands()
    for command in ("serve", "generate"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        for name in ("none", "ngram", "draft-model", "early-exit", "remote"):
            assert re.search(rf"Installed:[^.]*\b{name}\b", text), (command, name)
        assert re.search(r"Installed:[^.]*\bspecguard\b[^.]*\btransformers\b", text), command
