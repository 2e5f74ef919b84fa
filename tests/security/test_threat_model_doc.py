"""docs/security.md names a test for every attack; each named test must exist (datasette-style meta-test)."""

from __future__ import annotations

import re

import pytest
from support.paths import ROOT

DOC = (ROOT / "docs" / "security.md").read_text("utf-8")
NAMED = sorted(set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", DOC)))
ATTACKERS = ("client", "other tenant", "remote drafter", "serving node", "one verifier", "f verifiers",
             "audited provider", "network")


def test_the_doc_names_tests():
    assert len(NAMED) >= 40


@pytest.mark.parametrize(("path", "name"), NAMED)
def test_every_named_test_exists(path, name):
    source = ROOT / path
    assert source.is_file(), f"docs/security.md names {path}, which does not exist"
    assert re.search(rf"^\s*(async )?def {name}\(", source.read_text("utf-8"), re.M), f"{path} has no test {name}"


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_every_attacker_of_the_issue_has_a_section(attacker):
    assert re.search(rf"^### {re.escape(attacker)}", DOC, re.M), f"no section for attacker '{attacker}'"
