"""One `home_dir()`: node keys and the model cache live under the same $SPECGUARD_HOME.

Two copies used to disagree on `~`: `specguard.keys` expanded it and `specguard.models` did not,
so `SPECGUARD_HOME="~/x"` put the node key in $HOME/x and the models in ./~/x."""

from __future__ import annotations

import ast

from support.paths import ROOT

import specguard.keys
import specguard.models


def test_models_and_keys_agree_on_a_tilde_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SPECGUARD_HOME", "~/x")
    monkeypatch.delenv("SPECGUARD_MODEL_CACHE", raising=False)
    assert specguard.keys.home_dir() == tmp_path / "x"
    assert specguard.models.home_dir() == tmp_path / "x"
    assert specguard.models.model_cache_dir() == tmp_path / "x" / "models"


def test_unset_home_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SPECGUARD_HOME", raising=False)
    assert specguard.models.home_dir() == specguard.keys.home_dir() == tmp_path / ".cache" / "specguard"


def test_there_is_one_home_dir_function():
    defined = [str(path.relative_to(ROOT)) for folder in ("core", "plugins", "attest", "policies")
               for path in sorted((ROOT / folder).rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text("utf-8")))
               if isinstance(node, ast.FunctionDef) and node.name == "home_dir"]
    assert defined == ["core/keys.py"], f"home_dir() defined in {defined}: import specguard.keys.home_dir instead"
