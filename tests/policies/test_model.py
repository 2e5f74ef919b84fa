"""specguard.policies.model: presets, loading and the errors of a bad policy file."""

from __future__ import annotations

import pytest

from specguard.errors import ConfigError
from specguard.policies import load_policy, preset_names


def test_policy_presets_and_errors(tmp_path, caplog):
    assert {"dev", "strict"} <= set(preset_names())
    dev = load_policy("dev")
    assert dev.insecure and any("INSECURE" in r.message for r in caplog.records)
    strict = load_policy("strict")
    assert not strict.insecure and strict.digest.startswith("sha256:") and strict.digest != dev.digest
    assert strict.section("attestation")["allow_simulated"] is False
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="unknown policy preset"):
        load_policy("nonexistent")
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    notable = tmp_path / "t.toml"
    notable.write_text('attestation = "x"')
    with pytest.raises(ConfigError, match="must be a table"):
        load_policy(notable).section("attestation")
