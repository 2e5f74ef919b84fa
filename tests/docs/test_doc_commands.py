"""The shell examples in README.md and the operator docs run exactly as printed.

Every ```sh/```bash/```console/```shell block in DOCS carries one marker on the line just above it:

    <!-- runs-as-printed: NAME -->   a test below runs the block's text verbatim through bash
    <!-- not-run: REASON -->         why no test can run it (a remote provider, real TEE hardware, ...)

A block with neither fails `test_every_shell_block_is_run_or_marked` (naming the doc and line).
The only substitutions: the 127.0.0.1 port a test picks for a server the example assumes, a
temporary HOME/SPECGUARD_HOME, and this venv's `specguard` first on PATH (and as `.venv/bin/`).
Plain ``` blocks are synopses or output; each `specguard ...` synopsis line in them is checked
against `--help`: the command exists and has every option it names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.paths import ROOT, SHARED

DOCS = ("README.md", "docs/audit.md", "docs/consensus.md", "docs/attestation.md", "docs/scaling.md")
SHELL_LANGS = {"sh", "bash", "console", "shell"}
_MARKER = re.compile(r"<!-- (runs-as-printed|not-run): (.+?) -->")


@dataclass(frozen=True)
class ShellBlock:
    doc: str
    line: int  # 1-based line of the opening fence
    marker: str | None  # "runs-as-printed" | "not-run" | None
    label: str  # the example's name, or the reason it is not run
    text: str


def _marker_above(lines: list[str], fence: int) -> tuple[str | None, str]:
    above = lines[fence - 1].strip() if fence > 0 else ""
    found = _MARKER.fullmatch(above)
    return (found.group(1), found.group(2).strip()) if found else (None, "")


def shell_blocks(doc: str) -> list[ShellBlock]:
    """Every fenced shell block of `doc` (relative to the repository root), verbatim."""
    lines = (ROOT / doc).read_text("utf-8").split("\n")
    blocks, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if lines[index][3:].strip() in SHELL_LANGS:
            marker, label = _marker_above(lines, index)
            blocks.append(ShellBlock(doc, index + 1, marker, label, "\n".join(lines[index + 1:end])))
        index = end + 1
    return blocks


def runnable(name: str) -> ShellBlock:
    matches = [b for doc in DOCS for b in shell_blocks(doc) if b.marker == "runs-as-printed" and b.label == name]
    assert len(matches) == 1, f"expected one block marked runs-as-printed: {name}, found {len(matches)}"
    return matches[0]


# name -> the test that runs it (the README's curl quick start runs in test_doc_examples.py, on the tiny model)
RUN_BY_TESTS = {
    "readme_quick_start": "tests/docs/test_doc_examples.py::test_readme_curl_quickstart_runs_as_printed",
    "readme_generate": "tests/docs/test_doc_commands.py::test_readme_generate",
    "attestation_vectors": "tests/docs/test_doc_commands.py::test_attestation_vectors",
}


def test_every_shell_block_is_run_or_marked():
    unmarked = [f"{b.doc}:{b.line}" for doc in DOCS for b in shell_blocks(doc) if b.marker is None]
    assert not unmarked, f"shell blocks neither run by a test nor marked <!-- not-run: REASON -->: {unmarked}"
    for block in (b for doc in DOCS for b in shell_blocks(doc) if b.marker == "not-run"):
        assert len(block.label) >= 10, f"{block.doc}:{block.line}: not-run needs a real reason, got {block.label!r}"
    named = {b.label for doc in DOCS for b in shell_blocks(doc) if b.marker == "runs-as-printed"}
    assert named == set(RUN_BY_TESTS), f"runs-as-printed blocks without a test (or tests without a block): {named ^ set(RUN_BY_TESTS)}"


def test_marker_parsing_catches_an_unmarked_block(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n\n```sh\nspecguard --help\n```\n<!-- not-run: needs a remote provider -->\n```bash\nx\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    blocks = shell_blocks("doc.md")
    assert [(b.line, b.marker, b.label) for b in blocks] == [(3, None, ""), (7, "not-run", "needs a remote provider")]


def _env(home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "HOME": str(home), "SPECGUARD_HOME": str(home / "specguard"),
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}


def run_as_printed(block: ShellBlock, cwd: Path, home: Path, text: str | None = None) -> subprocess.CompletedProcess:
    """Run the block through `bash -e -o pipefail`; fail with the doc, line and output when it fails."""
    script = block.text if text is None else text
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=_env(home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"{block.doc}:{block.line} exited {done.returncode}\n"
                                  f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch directory where `.venv/bin/specguard` is this venv's (as after `make serve`)."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (tmp_path / "home").mkdir()
    return tmp_path


def test_readme_generate(workdir: Path):
    done = run_as_printed(runnable("readme_generate"), workdir, workdir / "home")
    answer, metrics = done.stdout.split("\n{\n", 1)
    assert answer.strip(), "the chat example prints its answer"
    assert json.loads("{\n" + metrics)["output_tokens"] == 16


def test_attestation_vectors(tmp_path: Path):
    """docs/attestation.md's commands on the shared vectors, from the repository root as printed."""
    assert (SHARED / "vectors" / "tee").is_dir()
    block = runnable("attestation_vectors")
    done = run_as_printed(block, ROOT, tmp_path)
    assert done.stdout.count("ok: True") == 2  # the SNP and NVIDIA vectors
    assert '"tcb_status": "UpToDate"' in done.stdout  # the TDX vector, --json
    assert "revocation not checked" in done.stderr  # strict fails closed on vectors without CRLs


# --- synopsis blocks (plain ``` fences): every command and option they name exists --------------

SYNOPSES = {"docs/audit.md": 9, "docs/attestation.md": 5}  # `specguard ...` lines in plain ``` blocks
_SUBCOMMAND = re.compile(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*")


def synopsis_lines(doc: str) -> list[tuple[int, str]]:
    """(line, text) of every `specguard ...` command in the doc's plain ``` blocks, continuations joined."""
    lines = (ROOT / doc).read_text("utf-8").split("\n")
    found, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        end = _skip_to_fence_end(lines, index) + index
        if lines[index] != "```":  # a fence with a language: not a synopsis
            index = end + 1
            continue
        for number in range(index + 1, end):
            if lines[number].startswith("specguard "):
                command, cursor = lines[number], number
                while command.rstrip().endswith("\\") and cursor + 1 < end:
                    cursor += 1
                    command = command.rstrip()[:-1].rstrip() + " " + lines[cursor].strip()
                found.append((number + 1, command.split("#")[0]))
        index = end + 1
    return found


def _skip_to_fence_end(lines: list[str], start: int) -> int:
    return next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```")) - start


def _help_texts(words: list[str]) -> str:
    from click.testing import CliRunner

    from specguard.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    path: list[list[str]] = [[]]
    for word in words:
        if not _SUBCOMMAND.fullmatch(word):
            break
        path = [[*p, alternative] for p in path for alternative in word.split("|")]
    texts = []
    for argv in path:
        result = CliRunner().invoke(cli, [*argv, "--help"])
        assert result.exit_code == 0, f"`specguard {' '.join(argv)} --help` failed:\n{result.output}"
        texts.append(result.output)
    return "\n".join(texts)


@pytest.mark.parametrize("doc", DOCS)
def test_synopsis_commands_and_options_exist(doc: str):
    synopses = synopsis_lines(doc)
    assert doc not in SYNOPSES or len(synopses) == SYNOPSES[doc], (doc, synopses)
    for line, command in synopses:
        words = command.split()[1:]
        if "..." in words[:2]:
            continue
        text = _help_texts(words)
        options = {m for m in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command)}
        missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))
        assert not missing, f"{doc}:{line}: `{' '.join(words[:3])}` has no option(s) {missing}"


def test_synopsis_check_catches_a_missing_option(tmp_path, monkeypatch):
    (tmp_path / "doc.md").write_text("```\nspecguard attest verify FILE [--no-such-option] \\\n    [--json]\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert synopsis_lines("doc.md") == [(2, "specguard attest verify FILE [--no-such-option] [--json]")]
    with pytest.raises(AssertionError, match=r"doc.md:2: .*\['--no-such-option'\]"):
        test_synopsis_commands_and_options_exist("doc.md")
