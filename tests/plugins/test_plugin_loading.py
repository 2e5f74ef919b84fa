"""Plugin loading fails loudly where it matters and quietly where it must not stop anything.

Third-party plugins here are real installed distributions: a `*.dist-info` folder with
`METADATA` and `entry_points.txt` on the path, found through `importlib.metadata` exactly as pip
installs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.paths import ROOT

from specguard import plugin_manager
from specguard.errors import PluginError
from specguard.hookspecs import hookimpl

SPECGUARD = str(Path(sys.executable).parent / "specguard")

GOOD = """
from specguard.hookspecs import hookimpl

@hookimpl
def check_request(request, policy):
    return None
"""
BROKEN = "import specguard_no_such_module_anywhere\n"
MISSPELLED = """
from specguard.hookspecs import hookimpl

@hookimpl
def check_requests(request, policy):
    return None
"""


def install(site: Path, dist: str, entry: str, module: str, source: str) -> None:
    """A distribution `dist` with entry point `entry = module` in the `specguard` group."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[specguard]\n{entry} = {module}\n")
    (site / f"{module}.py").write_text(source)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh plugin manager and an empty site folder on sys.path (installed plugins go there)."""
    site = tmp_path / "site"
    site.mkdir()
    manager = plugin_manager.SpecguardPluginManager("specguard")
    manager.add_hookspecs(plugin_manager.hookspecs)
    monkeypatch.setattr(plugin_manager, "pm", manager)
    monkeypatch.setattr(plugin_manager, "_loaded", False)
    monkeypatch.setattr(plugin_manager, "load_failures", [])
    monkeypatch.setattr(plugin_manager, "_distributions", {})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("SPECGUARD_NO_ENTRYPOINTS", raising=False)
    monkeypatch.delenv("SPECGUARD_LOAD_PLUGINS", raising=False)
    yield site
    for name in ("good_policy", "broken_policy", "misspelled_policy"):
        sys.modules.pop(name, None)


def test_misspelled_hook_is_an_error_naming_plugin_and_closest_hook():
    class Typo:
        @hookimpl
        def check_requests(self, request, policy):
            return None

    with pytest.raises(PluginError) as info:
        plugin_manager.pm.register(Typo(), name="typo-plugin")
    text = info.value.summary()
    assert "'typo-plugin'" in text and "'check_requests'" in text and "did you mean 'check_request'" in text
    assert plugin_manager.pm.get_plugin("typo-plugin") is None


def test_hook_with_an_argument_the_hook_does_not_offer_is_an_error():
    class Extra:
        @hookimpl
        def check_request(self, request, policy, user):
            return None

    with pytest.raises(PluginError, match="'extra-args'"):
        plugin_manager.pm.register(Extra(), name="extra-args")
    assert plugin_manager.pm.get_plugin("extra-args") is None


def test_optional_hooks_may_name_hooks_this_version_lacks():
    class Future:
        @hookimpl(optionalhook=True)
        def hook_from_a_later_version(self):
            return None

    plugin_manager.pm.register(Future(), name="future-plugin")
    plugin_manager.pm.unregister(name="future-plugin")


def test_load_plugins_by_distribution_name(fresh, monkeypatch):
    install(fresh, "my-policy-dist", "good", "good_policy", GOOD)
    monkeypatch.setenv("SPECGUARD_LOAD_PLUGINS", "My_Policy.Dist,receipts")  # pip-style spellings match
    plugin_manager.load_plugins()
    listed = {p["name"]: p for p in plugin_manager.get_plugins()}
    assert set(listed) == {"good", "specguard.plugins.receipts"}
    assert listed["good"]["distribution"] == "my-policy-dist" and listed["good"]["version"] == "1.0"
    assert listed["good"]["hooks"] == ["check_request"]


def test_load_plugins_by_entry_point_name(fresh, monkeypatch):
    install(fresh, "my-policy-dist", "good", "good_policy", GOOD)
    monkeypatch.setenv("SPECGUARD_LOAD_PLUGINS", "good")
    plugin_manager.load_plugins()
    assert [p["name"] for p in plugin_manager.get_plugins()] == ["good"]


def test_load_plugins_rejects_names_that_match_nothing(fresh, monkeypatch):
    install(fresh, "my-policy-dist", "good", "good_policy", GOOD)
    monkeypatch.setenv("SPECGUARD_LOAD_PLUGINS", "receipts,my-polcy-dist")
    with pytest.raises(PluginError) as info:
        plugin_manager.load_plugins()
    assert info.value.field == "SPECGUARD_LOAD_PLUGINS" and info.value.got == "my-polcy-dist"
    assert "my-policy-dist" in str(info.value.expected) and "receipts" in str(info.value.expected)


def test_a_broken_plugin_is_skipped_in_one_line_and_serving_refuses(fresh, capsys):
    install(fresh, "broken-dist", "broken", "broken_policy", BROKEN)
    install(fresh, "typo-dist", "typo", "misspelled_policy", MISSPELLED)
    plugin_manager.load_plugins()  # does not raise: other commands keep working
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    broken = next(line for line in err if "'broken'" in line)
    assert "distribution broken-dist" in broken and "specguard_no_such_module_anywhere" in broken
    typo = next(line for line in err if "'typo'" in line)
    assert "did you mean 'check_request'" in typo
    listed = {p["name"]: p for p in plugin_manager.get_plugins()}
    assert listed["specguard.plugins.receipts"]["loaded"]
    assert not listed["broken"]["loaded"] and "specguard_no_such_module_anywhere" in listed["broken"]["error"]
    assert not listed["typo"]["loaded"] and listed["typo"]["distribution"] == "typo-dist"
    assert plugin_manager.pm.get_plugin("broken") is None and plugin_manager.pm.get_plugin("typo") is None
    with pytest.raises(PluginError, match="refusing to serve") as info:
        plugin_manager.require_all_loaded()
    assert "broken" in str(info.value.got) and "typo" in str(info.value.got)


def test_cli_help_works_with_a_broken_plugin_and_serve_refuses(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "broken-dist", "broken", "broken_policy", BROKEN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "tests")]),
           "SPECGUARD_HOME": str(tmp_path / "home")}
    env.pop("SPECGUARD_NO_ENTRYPOINTS", None)
    env.pop("SPECGUARD_LOAD_PLUGINS", None)
    helped = subprocess.run([SPECGUARD, "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert helped.returncode == 0 and "serve" in helped.stdout
    assert [line for line in helped.stderr.splitlines() if line.strip()] == [
        line for line in helped.stderr.splitlines() if "plugin 'broken'" in line] != []
    served = subprocess.run([SPECGUARD, "serve", "--port", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert served.returncode == 2
    assert "refusing to serve" in served.stderr and "broken" in served.stderr
