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


def _reads_home_variable(node: ast.AST) -> bool:
    """`os.environ.get("SPECGUARD_HOME")`, `os.getenv("SPECGUARD_HOME")` or `os.environ["SPECGUARD_HOME"]`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv"):
        args = node.args
    elif isinstance(node, ast.Subscript):
        args = [node.slice]
    else:
        return False
    return bool(args) and isinstance(args[0], ast.Constant) and args[0].value == "SPECGUARD_HOME"


def test_only_home_dir_reads_the_home_variable():
    """A second reading of $SPECGUARD_HOME is a second home_dir() under another name (bench/scale.py had
    one that did not expand `~`)."""
    readers = sorted({str(path.relative_to(ROOT)) for folder in ("core", "plugins", "attest", "policies", "bench")
                      for path in sorted((ROOT / folder).rglob("*.py"))
                      for node in ast.walk(ast.parse(path.read_text("utf-8"))) if _reads_home_variable(node)})
    assert readers == ["core/keys.py"], f"$SPECGUARD_HOME read in {readers}: use specguard.keys.home_dir()"
