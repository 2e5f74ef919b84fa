"""Policy tables are read only through `Policy`'s typed properties (`attestation`, `consensus`,
`drafter`), each parsed once at load: no code outside policies/ reads a raw table
(`policy.section(...)`, `policy.data[...]`), so there is one parser per table and one place
where an unknown key fails."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support.paths import ROOT

from specguard.errors import ConfigError
from specguard.policies import load_policy
from specguard.policies.model import policy_from_dict

FOLDERS = ("core", "plugins", "attest", "bench")


def _raw_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "section":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and node.attr == "data" and "policy" in ast.unparse(node.value).lower():
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_nothing_outside_policies_reads_a_raw_policy_table():
    bad = [hit for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py")) for hit in _raw_reads(path)]
    assert not bad, "raw policy tables read outside policies/ (use Policy.attestation/.consensus/.drafter):\n" + \
        "\n".join(bad)


def test_the_scan_sees_a_raw_read(tmp_path):
    probe = ROOT / "core" / "_probe_raw_policy_read.py"
    probe.write_text("def f(policy):\n    return policy.section('consensus'), policy.data['drafter']\n", "utf-8")
    try:
        assert len(_raw_reads(probe)) == 2
    finally:
        probe.unlink()


@pytest.mark.parametrize("preset", ["dev", "strict", "snp-example"])
def test_presets_parse_into_typed_tables(preset):
    policy = load_policy(preset)
    assert policy.consensus.on_no_quorum in ("flag", "withhold", "fail")
    assert 0 < policy.drafter.health.timeout_seconds <= 600


def test_typed_tables_are_frozen():
    import dataclasses

    policy = load_policy("strict")
    for typed in (policy.consensus, policy.drafter, policy.drafter.health, policy.attestation):
        with pytest.raises(dataclasses.FrozenInstanceError):
            typed.__setattr__("x", 1)
    with pytest.raises(TypeError):
        policy.drafter.options["gguf"] = "x"  # type: ignore[index]
    assert policy.consensus.on_no_quorum == "fail" and policy.drafter.health.cooldown_seconds == 300.0


@pytest.mark.parametrize(("table", "key"), [("consensus", "on_no_qourum"), ("drafter", "min_acceptence_rate")])
def test_an_unknown_key_fails_at_load_naming_it(table, key):
    with pytest.raises(ConfigError) as err:
        policy_from_dict({"name": "typo", table: {key: 1}})
    assert key in err.value.diagnostics()


@pytest.mark.parametrize(("table", "body", "field"), [
    ("consensus", {"on_no_quorum": "ignore"}, "consensus.on_no_quorum"),
    ("drafter", {"timeout_seconds": "fast"}, "drafter.timeout_seconds"),
    ("drafter", {"min_acceptance_rate": 2.0}, "drafter.min_acceptance_rate"),
])
def test_a_bad_value_fails_at_load_naming_the_field(table, body, field):
    with pytest.raises(ConfigError) as err:
        policy_from_dict({"name": "bad", table: body})
    assert err.value.field == field


def test_drafter_options_and_health_knobs_are_split():
    policy = policy_from_dict({"name": "d", "drafter": {"gguf": "/m.gguf", "draft_ahead": False, "cooldown_seconds": 9}})
    assert dict(policy.drafter.options) == {"gguf": "/m.gguf", "draft_ahead": False}
    assert policy.drafter.health.cooldown_seconds == 9.0
