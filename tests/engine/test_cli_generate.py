"""`specguard generate`, `specguard models` and CLI error handling, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model
SPECGUARD = str(Path(sys.executable).parent / "specguard")


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SPECGUARD, *args], capture_output=True, text=True, input=input, timeout=300)


def test_generate_json_has_transcript_and_metrics():
    proc = run("generate", "--chat", "List three fruits.", "--drafter", "ngram", "-n", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("text", "output_ids", "prompt_ids", "steps", "metrics", "tokens", "model_digest"):
        assert key in out
    assert {"tokens_per_second", "mean_accepted_tokens", "acceptance_rate"} <= set(out["metrics"])
    assert 0 < len(out["output_ids"]) <= 16 and out["text"]
    assert sum(len(s["emitted"]) for s in out["steps"]) == len(out["output_ids"])


def test_generate_sampled_is_reproducible_from_the_seed():
    args = ("generate", "Once upon a time", "-n", "12", "-t", "0.9", "--seed", "1234", "--json")
    a, b = run(*args, "--drafter", "none"), run(*args, "--drafter", "ngram")
    assert a.returncode == 0 and b.returncode == 0
    assert json.loads(a.stdout)["output_ids"] == json.loads(b.stdout)["output_ids"]


def test_models_prints_digest_and_errors_are_one_line():
    proc = run("models", "--json")
    info = json.loads(proc.stdout)
    assert info["digest"].startswith("sha256:") and info["layers"] == 30 and info["vocab_size"] == 49152
    for args in (("models", "no/such-model"), ("models", "./missing.gguf"), ("generate", "x", "--drafter", "nope"),
                 ("generate", "x", "-n", "0")):
        bad = run(*args)
        assert bad.returncode == 2, (args, bad.stderr)
        lines = [line for line in bad.stderr.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr


def test_generate_defaults_to_the_fast_lossless_setup_and_prints_it():
    from specguard.defaults import available_cpus, choose_defaults

    args = ("generate", "--chat", "List three uses of Python dictionaries.", "-n", "24", "--ignore-eos", "--json")
    fast, plain = run(*args), run(*args, "--drafter", "none", "--threads", "1")
    assert fast.returncode == 0 and plain.returncode == 0, fast.stderr + plain.stderr
    expected = choose_defaults(available_cpus(), True)  # make install builds llama.cpp
    assert f"[{expected.describe()}]" in fast.stderr, fast.stderr
    assert "drafter none; torch 1 thread on" in plain.stderr and "chosen" not in plain.stderr
    fast_out, plain_out = json.loads(fast.stdout), json.loads(plain.stdout)
    assert fast_out["drafter"] == "llamacpp" and plain_out["drafter"] == "none"
    assert fast_out["output_ids"] == plain_out["output_ids"]
    assert len(fast_out["steps"]) < len(plain_out["steps"])  # llama.cpp's drafts were accepted


def test_generate_takes_the_serve_drafter_and_thread_options():
    proc = run("generate", "x", "-n", "4", "--drafter", "remote")
    assert proc.returncode == 2 and "--drafter-url" in proc.stderr
    split = run("generate", "Hello", "-n", "4", "--drafter", "llamacpp", "--threads", "1", "--drafter-threads", "1",
                "--json")
    assert split.returncode == 0, split.stderr
    assert "torch 1 thread + drafter 1 thread" in split.stderr
    assert json.loads(split.stdout)["drafter"] == "llamacpp"
