"""What a request's omitted fields become: one pure rule for the server, the verifiers and `verify`.

A chat request without `max_tokens` (the usual call) leaves the node to pick it. The node's
defaults — the default `max_tokens` and the context length it clamps to — are signed into every
receipt (`predicate.request_defaults`), and the sampling parameters a node runs are
`resolve_params(request, prompt_tokens, defaults)`: the serving node calls it to decide, verifier
nodes and `specguard verify --request` call it to check. A verifier does not take the node's word
for the defaults either: `check_params` compares the signed parameters with what the request
resolves to under the defaults the *auditor* pins (`ExpectedDefaults`: the default max_tokens,
256 unless pinned otherwise, and the context length when known). A node that signs another
default, or picks any max_tokens for a request that omitted it, fails with the field named.

Rule `specguard/request-defaults/v1` (the canonical request is `dump_request`'s object, every
schema default already filled in: temperature 1.0, top_p 1.0, completions' max_tokens 16, …):
  max_tokens = the request's max_completion_tokens or max_tokens (chat), or max_tokens
               (completion); when null: min(defaults.max_tokens, defaults.context_length - prompt_tokens)
  temperature, top_p = the request's (1.0 when null); stop = the request's (a string is one stop)
  seed = the request's; when null and sampling (temperature > 0) the node draws one and records it
  ignore_eos = the request's (false when null)
Part of the pure library: imports only the foundation modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ParseError, VerificationError
from ..transcript import SamplingParams

RULES_V1 = "specguard/request-defaults/v1"
#: the default max_tokens of `specguard serve` and what a verifier expects unless pinned otherwise
DEFAULT_MAX_TOKENS = 256
#: predicate key of the signed defaults (receipts before it have none)
DEFAULTS_KEY = "request_defaults"

__all__ = ["RULES_V1", "DEFAULT_MAX_TOKENS", "DEFAULTS_KEY", "RequestDefaults", "ExpectedDefaults",
           "RequestDefaultsParseError", "ParamsMismatchError", "UnpinnedDefaultError", "requested_max_tokens",
           "resolve_max_tokens", "params_from_request", "resolve_params", "check_params"]


class RequestDefaultsParseError(ParseError):
    """The signed request defaults are malformed (exit code 3)."""


class ParamsMismatchError(VerificationError):
    """The signed sampling parameters are not what the request and the defaults resolve to (exit code 11)."""

    exit_code = 11


class UnpinnedDefaultError(ParamsMismatchError):
    """A default that decided this response is not pinned, so it cannot be checked (exit code 11)."""


def _positive_int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
        raise RequestDefaultsParseError("must be a positive integer", field=field, got=value)
    return value


@dataclass(frozen=True)
class RequestDefaults:
    """What a node fills in for an omitted field: signed into each receipt."""

    max_tokens: int
    context_length: int
    rules: str = RULES_V1

    def __post_init__(self) -> None:
        _positive_int(self.max_tokens, "request_defaults.max_tokens")
        _positive_int(self.context_length, "request_defaults.context_length")
        if self.rules != RULES_V1:
            raise RequestDefaultsParseError("unknown request-defaults rule", field="request_defaults.rules",
                                            got=self.rules, expected=RULES_V1)

    def to_json(self) -> dict[str, Any]:
        return {"rules": self.rules, "max_tokens": self.max_tokens, "context_length": self.context_length}

    @classmethod
    def from_json(cls, obj: Any, field: str = "predicate." + DEFAULTS_KEY) -> RequestDefaults:
        """Parse the signed object strictly (exact keys, positive integers, a known rule)."""
        if not isinstance(obj, dict) or set(obj) != {"rules", "max_tokens", "context_length"}:
            raise RequestDefaultsParseError("must be {rules, max_tokens, context_length}", field=field,
                                            got=sorted(obj) if isinstance(obj, dict) else type(obj).__name__)
        try:
            return cls(max_tokens=obj["max_tokens"], context_length=obj["context_length"], rules=obj["rules"])
        except RequestDefaultsParseError as exc:
            raise RequestDefaultsParseError(exc.message, field=field + "." + (exc.field or "").split(".")[-1],
                                            got=exc.got, expected=exc.expected) from exc


@dataclass(frozen=True)
class ExpectedDefaults:
    """The defaults a verifier accepts (the auditor's pins): the default max_tokens (256 unless pinned)
    and the context length (None: not pinned; then a response whose max_tokens it cut fails)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    context_length: int | None = None

    @classmethod
    def from_policy_section(cls, section: Mapping[str, Any], context_length: int | None = None) -> ExpectedDefaults:
        """From a policy's `[request_defaults]` table (`max_tokens`, `context_length`); `context_length`
        here is the fallback (e.g. the verifier's own model's context)."""
        max_tokens = section.get("max_tokens", DEFAULT_MAX_TOKENS)
        ctx = section.get("context_length", context_length)
        _positive_int(max_tokens, "[request_defaults] max_tokens")
        if ctx is not None:
            _positive_int(ctx, "[request_defaults] context_length")
        return cls(max_tokens=max_tokens, context_length=ctx)


def _is_chat(request: Mapping[str, Any]) -> bool:
    return "messages" in request


def requested_max_tokens(request: Mapping[str, Any]) -> int | None:
    """The max_tokens the client asked for (chat: max_completion_tokens, else max_tokens), or None."""
    if _is_chat(request) and request.get("max_completion_tokens") is not None:
        return request["max_completion_tokens"]
    return request.get("max_tokens")


def resolve_max_tokens(requested: int | None, prompt_tokens: int, defaults: RequestDefaults) -> int:
    """The max_tokens a request runs with (range checks against the context are the server's)."""
    if requested is not None:
        return requested
    return min(defaults.max_tokens, defaults.context_length - prompt_tokens)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def params_from_request(request: Mapping[str, Any], max_tokens: int) -> SamplingParams:
    """The decoding parameters of a canonical request, with `max_tokens` already resolved."""
    temperature, top_p = request.get("temperature"), request.get("top_p")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        seed=request.get("seed"),
        stop=_stops(request.get("stop")),
        ignore_eos=bool(request.get("ignore_eos")),
    )


def resolve_params(request: Mapping[str, Any], prompt_tokens: int, defaults: RequestDefaults) -> SamplingParams:
    """What an honest node runs for `request` (canonical) with `prompt_tokens` prompt tokens."""
    return params_from_request(request, resolve_max_tokens(requested_max_tokens(request), prompt_tokens, defaults))


def _with_drawn_seed(want: dict[str, Any], request: Mapping[str, Any], got: Mapping[str, Any]) -> dict[str, Any]:
    """A sampled request without a seed: the node draws one, which must be recorded (any integer)."""
    if request.get("seed") is None and want["temperature"] != 0.0:
        seed = got.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64:
            want["seed"] = seed
        else:
            want["seed"] = "<a recorded seed>"
    return want


def _compare(want: Mapping[str, Any], got: Mapping[str, Any], why: str) -> None:
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            raise ParamsMismatchError(f"signed params.{name} is not what {why}", field=f"params.{name}",
                                      got=got.get(name), expected=want.get(name))


def check_params(signed_params: Mapping[str, Any], request: Mapping[str, Any], prompt_tokens: int | None,
                 signed_defaults: RequestDefaults | None, expected: ExpectedDefaults) -> str:
    """Raise unless the signed params are what `request` (canonical) resolves to under the node's signed
    defaults (when the receipt has them) *and* under the defaults the verifier expects (`expected`).

    `prompt_tokens` (None: unknown) matters only when the node cut an omitted max_tokens below the
    default to fit the context; then it and a pinned context length are needed. Returns a detail line.
    """
    got = dict(signed_params)
    requested = requested_max_tokens(request)
    want = _with_drawn_seed(params_from_request(request, requested or 1).to_json(), request, got)
    if requested is not None:
        _compare(want, got, "the request asks for")
        return "params are the ones the request asks for"
    if signed_defaults is not None and signed_defaults.max_tokens != expected.max_tokens:
        raise ParamsMismatchError("the request has no max_tokens and the node signs another default max_tokens "
                                  "than the one expected (pinned)", field="request_defaults.max_tokens",
                                  got=signed_defaults.max_tokens, expected=expected.max_tokens)
    want["max_tokens"] = got.get("max_tokens")
    _compare(want, got, "the request asks for")  # every field but max_tokens
    got_max = got.get("max_tokens")
    if signed_defaults is not None and prompt_tokens is not None:
        node_max = resolve_max_tokens(None, prompt_tokens, signed_defaults)
        if got_max != node_max:
            raise ParamsMismatchError("signed params.max_tokens is not what the node's own signed defaults give "
                                      "for a request without max_tokens", field="params.max_tokens", got=got_max,
                                      expected=node_max)
    if prompt_tokens is not None and expected.context_length is not None:
        want_max = min(expected.max_tokens, expected.context_length - prompt_tokens)
    elif got_max == expected.max_tokens:
        return f"params resolve from the request and the default max_tokens {expected.max_tokens}"
    elif prompt_tokens is None:
        raise UnpinnedDefaultError("the request has no max_tokens and the node ran fewer than the default: checking "
                                   "that needs the prompt's length (the response's specguard.prompt_ids or --model)",
                                   field="params.max_tokens", got=got_max, expected=expected.max_tokens)
    else:
        raise UnpinnedDefaultError(
            "the request has no max_tokens and the node cut the default to the room its context length leaves "
            f"after {prompt_tokens} prompt tokens; pin the context length to check it",
            field="request_defaults.context_length",
            got=signed_defaults.context_length if signed_defaults is not None else None,
            expected="a pinned context length (--context-length, --model, or [request_defaults] context_length)")
    if got_max != want_max:
        raise ParamsMismatchError("signed params.max_tokens is not what a request without max_tokens resolves to "
                                  "under the expected defaults", field="params.max_tokens", got=got_max,
                                  expected=want_max)
    return (f"params resolve from the request, the default max_tokens {expected.max_tokens} and the context "
            f"length {expected.context_length}")
