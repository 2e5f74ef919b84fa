"""Shared fixtures. Model-converting work is cached once per machine (SPECGUARD_MODEL_CACHE);
every test that writes node state gets its own SPECGUARD_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# py_ecc raises the recursion limit on import, which turns deeply nested JSON into a C stack
# overflow; importing it through specguard's guard first keeps the limit for the whole session.
import specguard.attest.commitments._py_ecc  # noqa: F401

# keep the converted default model in the user's cache even when tests move SPECGUARD_HOME
_default_home = Path(os.environ.get("SPECGUARD_HOME") or Path.home() / ".cache" / "specguard")
os.environ.setdefault("SPECGUARD_MODEL_CACHE", str(_default_home / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tmp_home(tmp_path, monkeypatch) -> Path:
    """A fresh SPECGUARD_HOME for node keys, logs and caches of one test."""
    home = tmp_path / "specguard-home"
    home.mkdir()
    monkeypatch.setenv("SPECGUARD_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per session."""
    from specguard.models import load_model

    return load_model("smollm2-135m")
