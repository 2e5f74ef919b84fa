"""The fenced code blocks of README.md and docs/*.md, and which of them the tests run.

A block's marker is the HTML comment on the line just above its fence:
`<!-- example: NAME -->` names a block a test runs exactly as printed (EXAMPLES says which test),
`<!-- not-run: REASON -->` says why a runnable block cannot run here. A runnable block (``sh``,
``bash``, ``console``, ``shell``, ``python``) with neither, or an untagged block that holds
commands, fails tests/docs/test_doc_blocks.py.
"""

from __future__ import annotations

import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.paths import ROOT
from support.servers import ServerHandle

RUNNABLE = frozenset({"sh", "bash", "console", "shell", "python"})
_FENCE = re.compile(r"^(\s*)```([\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(example|not-run):\s*(.*?)\s*-->\s*$")
# the first word of a line that runs something; an untagged block holding such a line must be tagged
_COMMAND = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(specguard|make|pip|python|curl|jq|ray|serve)(\s|$)")

# (doc, example name) -> the test (file::function) that runs it as printed
EXAMPLES: dict[tuple[str, str], str] = {
    ("docs/plugins.md", "max_tokens_policy"):
        "tests/docs/test_doc_examples.py::test_policy_example_sees_the_resolved_max_tokens",
    ("docs/plugins.md", "repeat_drafter"): "tests/docs/test_doc_examples.py::test_drafter_example_is_lossless",
    ("docs/plugins.md", "witness_layer"): "tests/docs/test_doc_examples.py::test_evidence_layer_example_end_to_end",
    ("README.md", "quickstart_curl"): "tests/docs/test_doc_examples.py::test_readme_curl_quickstart_runs_as_printed",
    ("README.md", "quickstart_openai"): "tests/docs/test_doc_examples.py::test_openai_sdk_examples_run_as_printed",
    ("docs/server.md", "using_it_curl"): "tests/docs/test_doc_examples.py::test_server_doc_curl_example_runs_as_printed",
    ("docs/server.md", "using_it_openai"): "tests/docs/test_doc_examples.py::test_openai_sdk_examples_run_as_printed",
    ("docs/server.md", "verify_stream"):
        "tests/docs/test_doc_examples.py::test_server_doc_stream_verification_runs_as_printed",
    ("docs/attestation.md", "verify_shared_vectors"):
        "tests/docs/test_doc_commands.py::test_attestation_vector_examples_run_as_printed",
    ("README.md", "generate"): "tests/docs/test_doc_commands.py::test_readme_generate_examples_run_as_printed",
    ("README.md", "serve_overrides"): "tests/docs/test_doc_commands.py::test_serve_examples_start_as_printed",
    ("README.md", "operator_serve"): "tests/docs/test_doc_commands.py::test_serve_examples_start_as_printed",
    ("docs/server.md", "serve"): "tests/docs/test_doc_commands.py::test_serve_examples_start_as_printed",
    ("docs/audit.md", "try_it"): "tests/docs/test_doc_commands.py::test_audit_try_it_catches_the_4bit_copy",
}

# Blocks waived from here rather than marked in their doc: (doc, first line of the block) -> why the
# block is not run. Empty: every block carries its own marker; prefer a marker in the doc.
ELSEWHERE: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str  # the fence's info string ("" when untagged)
    text: str  # the block's lines, verbatim, without the fences
    marker: str | None  # "example" | "not-run" | None
    marker_value: str  # the example's name or the not-run reason

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]

    def holds_commands(self) -> bool:
        return any(_COMMAND.match(line) for line in self.text.splitlines())


def doc_paths() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of `path`, in order."""
    lines = path.read_text("utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        marker = _MARKER.match(lines[i - 1]) if i else None
        found.append(Block(_relative(path), i + 1, opening.group(2), "\n".join(lines[i + 1:end]),
                           marker.group(1) if marker else None, marker.group(2) if marker else ""))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_paths() for block in blocks(path)]


def example(doc: str, name: str) -> str:
    """The text of the block of `doc` marked `<!-- example: name -->`, verbatim."""
    found = [b for b in blocks(ROOT / doc) if b.marker == "example" and b.marker_value == name]
    assert len(found) == 1, f"{doc} has {len(found)} blocks marked <!-- example: {name} -->"
    return found[0].text


def run_sh(script: str, cwd: Path, ports: dict[int, int] | None = None, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a shell block as printed under `bash -euo pipefail` in `cwd`.

    The only changes: each printed port (`127.0.0.1:P`, `localhost:P`) in `ports` becomes the
    port the test started; `specguard` is this environment's (first on PATH, and `.venv/bin/...`
    resolves through a `.venv` link in `cwd` when `cwd` has none).
    """
    for printed, actual in (ports or {}).items():
        script = re.sub(rf"\b(127\.0\.0\.1|localhost):{printed}\b", rf"\g<1>:{actual}", script)
    venv = Path(sys.executable).parent.parent
    if cwd != ROOT and not (cwd / ".venv").exists():
        (cwd / ".venv").symlink_to(venv, target_is_directory=True)
    full_env = {**os.environ, **(env or {}), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def printed_commands(script: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line.split(" #", 1)[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class PrintedServer:
    """A long-running command of a doc, started as printed on loopback ports the test chose."""

    handle: ServerHandle
    url: str


def start_printed(command: str, cwd: Path, ports: dict[int, int], env: dict[str, str],
                  health_path: str = "/health", timeout: float = 180) -> PrintedServer:
    """Start `specguard ...` (or `.venv/bin/specguard ...`) as printed, but on 127.0.0.1 and with each
    printed port replaced by the one in `ports` (8000, serve's default, when it prints none), and wait
    until `health_path` answers 200 (over https with `cwd/ca.pem` when it serves TLS)."""
    argv = shlex.split(command.rstrip("&").strip())
    assert argv[0] in ("specguard", ".venv/bin/specguard"), command
    argv = [str(Path(sys.executable).parent / "specguard"), *argv[1:]]
    if "--port" not in argv:
        argv += ["--port", "8000"]
    argv = [_local(arg, ports) for arg in argv]
    argv[argv.index("--port") + 1] = str(ports[int(argv[argv.index("--port") + 1])])
    if "--host" in argv:
        argv[argv.index("--host") + 1] = "127.0.0.1"
    port = int(argv[argv.index("--port") + 1])
    tls = "--ssl-certfile" in argv
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    fd, log = tempfile.mkstemp(prefix="specguard-doc-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    handle = ServerHandle(proc, port, Path(log), argv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and handle.alive():
        try:
            verify = ssl.create_default_context(cafile=str(cwd / "ca.pem")) if tls else True
            if httpx.get(url + health_path, timeout=2.0, verify=verify, trust_env=False).status_code == 200:
                return PrintedServer(handle, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop(timeout=5)
    raise AssertionError(f"{command!r} did not become healthy at {url}{health_path}:\n{handle.output()}")


def _local(arg: str, ports: dict[int, int]) -> str:
    return re.sub(r"\b(127\.0\.0\.1|localhost):(\d+)\b",
                  lambda m: f"{m.group(1)}:{ports.get(int(m.group(2)), int(m.group(2)))}", arg)
