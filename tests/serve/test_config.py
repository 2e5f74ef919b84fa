"""ServeConfig (specguard.serve.config): every bad value is refused, typed, naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from specguard.errors import ConfigError, UsageError
from specguard.serve.config import ServeConfig

BAD = [
    ({"role": "leader"}, "--role"),
    ({"dtype": "fp8"}, "--dtype"),
    ({"device": "tpu"}, "--device"),
    ({"log_level": "loud"}, "--log-level"),
    ({"port": 70000}, "--port"),
    ({"max_concurrency": 0}, "--max-concurrency"),
    ({"max_queue": -1}, "--max-queue"),
    ({"max_batch_rows": -1}, "--max-batch-rows"),
    ({"default_max_tokens": 0}, "--default-max-tokens"),
    ({"max_model_len": 1}, "--max-model-len"),
    ({"max_prompt_chars": 0}, "--max-prompt-chars"),
    ({"threads": 0}, "--threads"),
    ({"drafter_threads": 0}, "--drafter-threads"),
    ({"quorum": 3, "verifiers": ("http://a", "http://b")}, "--quorum"),
    ({"quorum": 0}, "--quorum"),
    ({"verifier_keys": (b"short",)}, "verifier_keys[0]"),
]


@pytest.mark.parametrize(("changes", "field"), BAD, ids=[f for _, f in BAD])
def test_each_bad_value_is_a_usage_error_naming_its_field(changes, field):
    with pytest.raises(UsageError) as err:
        ServeConfig(**changes)
    assert err.value.field == field
    assert err.value.got is not None or field == "--drafter-url"


def test_a_remote_drafter_needs_its_url():
    with pytest.raises(ConfigError) as err:
        ServeConfig(drafter="remote")
    assert err.value.field == "--drafter-url"
    assert ServeConfig(drafter="remote", drafter_url="http://127.0.0.1:1").drafter_url == "http://127.0.0.1:1"


def test_config_is_frozen_and_its_option_tables_read_only():
    config = ServeConfig(engine_options={"threads": 2, "n_ctx": None}, verifiers=["http://a"])
    assert dict(config.engine_options) == {"threads": 2}  # None means "not given"
    assert config.verifiers == ("http://a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.engine_options["threads"] = 4  # type: ignore[index]


def test_replace_validates_again():
    with pytest.raises(UsageError):
        ServeConfig().replace(max_queue=-5)


def test_from_cli_parses_verifier_keys_and_refuses_unknown_options():
    key = "ab" * 32
    config = ServeConfig.from_cli(verifier_keys=(key,), verifiers=["http://a"], quorum=1, max_concurrency=None)
    assert config.verifier_keys == (bytes.fromhex(key),) and config.max_concurrency is None
    with pytest.raises(UsageError) as err:
        ServeConfig.from_cli(verifier_keys=("not a key",))
    assert "verifier-key" in (err.value.field or "")
    with pytest.raises(UsageError) as err:
        ServeConfig.from_cli(no_such_option=1)
    assert err.value.field == "options" and err.value.got == ["no_such_option"]
