"""Command examples of the docs, run as printed (see tests/support/doc_blocks.py for what may change)."""

from __future__ import annotations

import json
import re

import pytest
from support.doc_blocks import example, run_sh
from support.paths import ROOT, SHARED


@pytest.mark.skipif(not (SHARED / "vectors" / "tee").is_dir(), reason="the shared TEE vectors are not beside the repo")
def test_attestation_vector_examples_run_as_printed():
    """docs/attestation.md's `attest verify` examples, from the repository root (paths as printed)."""
    script = example("docs/attestation.md", "verify_shared_vectors")
    done = run_sh(script, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r'"tcb_status":\s*"UpToDate"', done.stdout), done.stdout
    assert re.search(r"^validated: True$", done.stdout, re.M), done.stdout

    # what the closing comment says of --policy strict, checked on the last command
    last = script[script.rindex("specguard attest verify"):script.index("\n# ... while")]
    strict = run_sh(last.replace("--policy dev", "--policy strict") + " || exit $?", ROOT)
    assert strict.returncode == 5 and "revocation not checked" in strict.stderr, strict.stderr
    bare = run_sh(re.sub(r"--reference-values \S+", "", last.replace("--policy dev", "--policy strict")), ROOT)
    assert bare.returncode == 5 and "reference values required" in bare.stderr, bare.stderr


@pytest.mark.model
def test_readme_generate_examples_run_as_printed(tmp_path):
    """`specguard generate` on the default model: a chat answer, then the metrics of a seeded sample."""
    done = run_sh(example("README.md", "generate"), tmp_path, env={"SPECGUARD_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads(done.stdout[done.stdout.rindex("\n{"):])
    assert metrics["output_tokens"] > 0
