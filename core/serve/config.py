"""`ServeConfig`: everything `specguard serve` was told, frozen and validated in one place.

`ServeConfig.from_cli(**options)` is what the `serve` command builds from its click options;
tests and embedders build a `ServeConfig(...)` directly and hand it to `specguard.serve.node.Node`.
A bad value raises a `UsageError` (or `ConfigError`) naming the field, what it got and what it
expects, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..context import ROLES
from ..errors import ConfigError, UsageError

DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
#: engines that run on the built-in continuous-batching scheduler
BATCHING_ENGINES = ("specguard", "builtin")


def _frozen(options: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType({k: v for k, v in (options or {}).items() if v is not None})


def _at_least(name: str, value: int | None, low: int, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise UsageError(f"{what} must be at least {low}", field=name, got=value, expected=f">= {low}")


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name.lstrip('-')}", field=name, got=value, expected=choices)


@dataclass(frozen=True)
class ServeConfig:
    """A serving node's settings (the `specguard serve` options; `None` means the documented default)."""

    model_ref: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    #: engine name: specguard (alias builtin), llamacpp, ...
    engine: str = "specguard"
    #: drafter name; None: the node's default (`serve` picks llamacpp when installed, else ngram)
    drafter: str | None = None
    draft_model: str | None = None
    drafter_url: str | None = None
    drafter_api_key: str | None = None
    exit_layer: int | None = None
    policy_ref: str = "dev"
    #: requests generating at once (the batch size with batching); None, what `serve` passes when the
    #: option is absent: 8 batched, else 1
    max_concurrency: int | None = 1
    batching: bool = True
    max_batch_rows: int | None = None
    max_queue: int = 8
    default_max_tokens: int = 256
    max_model_len: int | None = None
    role: str = "serve"
    verifiers: tuple[str, ...] = ()
    #: trusted verifier keys (raw 32-byte Ed25519 keys; `from_cli` parses hex or files)
    verifier_keys: tuple[bytes, ...] = ()
    quorum: int | None = None
    served_model_name: str | None = None
    threads: int | None = None
    drafter_threads: int | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    log_level: str = "info"
    max_prompt_chars: int | None = None
    #: with role "verifier": a Ray Serve pool of verifier replicas
    use_ray: bool = False
    api_key: str | None = None
    api_keys_file: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: $SPECGUARD_HOME of the node (None: `specguard.keys.home_dir()`)
    home: Path | None = None
    #: engine options (threads, n_ctx, ...) and extra drafter options, read-only; None values dropped
    engine_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    drafter_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "verifiers", tuple(self.verifiers))
        object.__setattr__(self, "verifier_keys", tuple(self.verifier_keys))
        object.__setattr__(self, "engine_options", _frozen(self.engine_options))
        object.__setattr__(self, "drafter_options", _frozen(self.drafter_options))
        self._check_choices()
        self._check_limits()
        self._check_consensus()
        if self.drafter == "remote" and not self.drafter_url:
            raise ConfigError("--drafter remote needs --drafter-url URL", field="--drafter-url", got=None,
                              expected="the URL of a `specguard draft-serve`")

    def _check_choices(self) -> None:
        _one_of("--role", self.role, ROLES)
        _one_of("--dtype", self.dtype, DTYPES)
        _one_of("--device", self.device, DEVICES)
        _one_of("--log-level", self.log_level, LOG_LEVELS)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise UsageError("the port must be a TCP port number", field="--port", got=self.port,
                             expected="0..65535")

    def _check_limits(self) -> None:
        _at_least("--max-concurrency", self.max_concurrency, 1, "max concurrency")
        _at_least("--max-queue", self.max_queue, 0, "max queue")
        _at_least("--max-batch-rows", self.max_batch_rows, 0, "max batch rows (0: no cap)")
        _at_least("--default-max-tokens", self.default_max_tokens, 1, "default max tokens")
        _at_least("--max-model-len", self.max_model_len, 2, "max model length (tokens)")
        _at_least("--max-prompt-chars", self.max_prompt_chars, 1, "max prompt characters")
        _at_least("--threads", self.threads, 1, "threads")
        _at_least("--drafter-threads", self.drafter_threads, 1, "drafter threads")

    def _check_consensus(self) -> None:
        if self.quorum is not None and (self.quorum < 1 or (self.verifiers and self.quorum > len(self.verifiers))):
            raise UsageError("quorum must be between 1 and the number of verifiers", field="--quorum",
                             got=self.quorum, expected=f"1..{len(self.verifiers)}")
        for i, key in enumerate(self.verifier_keys):
            if not isinstance(key, bytes) or len(key) != 32:
                raise UsageError("a verifier key must be 32 raw bytes (from_cli parses hex or files)",
                                 field=f"verifier_keys[{i}]", got=type(key).__name__, expected="32 bytes")

    @classmethod
    def from_cli(cls, **options: Any) -> ServeConfig:
        """The config of the `serve` command's click options (their parameter names); verifier keys
        (64 hex digits or files) are parsed here, so a bad key fails before any model loads."""
        from ..consensus.config import key_value

        keys = tuple(key_value(k, "--verifier-key") for k in options.pop("verifier_keys", ()) or ())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise UsageError("unknown serve option(s)", field="options", got=unknown, expected=sorted(names))
        options["verifiers"] = tuple(options.get("verifiers") or ())
        return cls(verifier_keys=keys, **options)

    @property
    def batched_engine(self) -> bool:
        """Whether the engine is the built-in one, which batches requests (when `batching` is on)."""
        return self.engine in BATCHING_ENGINES

    def consensus_args(self) -> dict[str, Any]:
        """The command line's consensus settings, as `NodeContext.consensus` holds them."""
        return {"verifiers": self.verifiers, "quorum": self.quorum, "verifier_keys": self.verifier_keys}

    def replace(self, **changes: Any) -> ServeConfig:
        """A copy with `changes` (validated again)."""
        return dataclasses.replace(self, **changes)


__all__ = ["DEVICES", "DTYPES", "LOG_LEVELS", "ServeConfig"]
