"""The install is pinned: `make install` installs from requirements.lock, the lock covers every
dependency pyproject.toml names within its ranges, and the environment under test is the locked one."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKED_EXTRAS = ("test", "ray", "model", "llamacpp")


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"requirements.lock: every line pins one version with '==', got {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    names = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        names += project["optional-dependencies"][extra]
    return [Requirement(n) for n in names]


def test_makefile_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert re.search(r"--constraint \$\(LOCK\)", makefile) and "LOCK        := requirements.lock" in makefile
    assert "--build-constraint $(BUILD_LOCK)" in makefile
    for extra in LOCKED_EXTRAS:
        assert extra in makefile.split("EXTRAS :=", 1)[1].splitlines()[0], f"make install must install extra {extra!r}"


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    pins = _lock()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock: {req.name} (pyproject.toml) is not pinned; run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock: {req.name}=={pins[name]} is outside pyproject.toml's range {req.specifier}"
        )


def test_the_environment_under_test_is_the_locked_one() -> None:
    """A drifted venv (an upgrade by hand, a stale cache) is caught here rather than by odd failures."""
    drifted = []
    for name, version in _lock().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            drifted.append(f"{name}: not installed, lock pins {version}")
            continue
        if installed.public != version.public:
            drifted.append(f"{name}: installed {installed}, lock pins {version}")
    assert drifted == [], "the venv differs from requirements.lock (make clean install): " + "; ".join(drifted)
