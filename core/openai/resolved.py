"""The resolved request: one typed object with every default filled in, built in one place.

A client may leave out `max_tokens` (or send `max_completion_tokens` instead), `temperature`,
`stop`... The node fills each omitted field from its own defaults. `resolve_request` is the pure
function that does it: the same client request, node defaults and prompt length always give the
same `ResolvedRequest`. Plugin hooks (`check_request`, `on_step`) receive this object, so a policy
checks the value that will run (`request.max_tokens` is never None, whichever alias the client
used), and the engine's `SamplingParams` are derived from it (`sampling_params()`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..attest.request_defaults import RequestDefaults, resolve_max_tokens
from ..errors import RequestError
from ..transcript import SamplingParams
from ..web.errors import ContextLengthError
from . import prompting
from .schema import ChatCompletionRequest, CompletionRequest

Endpoint = Literal["chat", "completion"]
MaxTokensSource = Literal["max_tokens", "max_completion_tokens", "node_default", "completion_default"]


#: What a node fills in for omitted request fields (max_tokens, context length): the same object the
#: node signs into each receipt, so the server and the verifiers resolve with one rule.
NodeDefaults = RequestDefaults


@dataclass(frozen=True)
class Message:
    """One chat message as the template sees it (text parts joined)."""

    role: str
    content: str


@dataclass(frozen=True)
class ResolvedRequest:
    """A generation request exactly as it will run: no field is None unless None is its meaning."""

    endpoint: Endpoint
    model: str
    #: tokens of the prompt after the chat template / tokenizer
    prompt_tokens: int
    #: generated tokens at most (from max_tokens, max_completion_tokens or the node's default)
    max_tokens: int
    max_tokens_source: MaxTokensSource
    temperature: float
    top_p: float
    #: the client's seed; None means the node draws one and records it in the receipt
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    stream: bool
    include_usage: bool
    #: per-token logprobs on (chat `logprobs: true`, completions `logprobs: k`)
    logprobs: bool
    #: alternatives per token (chat `top_logprobs`, completions `logprobs`)
    top_logprobs: int
    user: str | None
    #: chat messages (empty for completions)
    messages: tuple[Message, ...]
    #: completion prompt: text or token ids (None for chat)
    prompt: str | tuple[int, ...] | None

    def sampling_params(self) -> SamplingParams:
        """The engine's decoding parameters."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, stop=self.stop, ignore_eos=self.ignore_eos)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples as lists)."""
        out = asdict(self)
        out["stop"] = list(self.stop)
        out["messages"] = [dict(m) for m in out["messages"]]
        if isinstance(self.prompt, tuple):
            out["prompt"] = list(self.prompt)
        return out


def check_request_shape(req: ChatCompletionRequest | CompletionRequest) -> None:
    """Refuse combinations no model can honour (before any tokenizing)."""
    if isinstance(req, ChatCompletionRequest):
        if req.top_logprobs is not None and req.top_logprobs > 0 and not req.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", field="top_logprobs", got=req.top_logprobs)
        if req.max_tokens is not None and req.max_completion_tokens is not None \
                and req.max_tokens != req.max_completion_tokens:
            raise RequestError("max_tokens and max_completion_tokens disagree; send one",
                               field="max_completion_tokens", got=req.max_completion_tokens, expected=req.max_tokens)
    elif req.echo:
        raise RequestError("echo is not supported", field="echo", got=True, expected=False)


def _max_tokens(req: ChatCompletionRequest | CompletionRequest, defaults: NodeDefaults,
                prompt_tokens: int) -> tuple[int, MaxTokensSource]:
    context = defaults.context_length
    if prompt_tokens >= context:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens but this model's context length is {context} tokens "
            f"(room is needed for at least one generated token)", field="messages/prompt",
            got=prompt_tokens, expected=f"< {context}")
    room = context - prompt_tokens
    requested = prompting.requested_max_tokens(req)
    if requested is None:  # omitted (chat) or sent as null (either endpoint)
        return resolve_max_tokens(None, prompt_tokens, defaults), "node_default"
    source: MaxTokensSource = "max_tokens"
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        source = "max_completion_tokens"
    elif isinstance(req, CompletionRequest) and "max_tokens" not in req.model_fields_set:
        source = "completion_default"
    if requested > room:
        raise ContextLengthError(
            f"max_tokens={requested} does not fit: the context length is {context} tokens and the prompt uses "
            f"{prompt_tokens}, so max_tokens must be in 1..{room}", field="max_tokens", got=requested,
            expected=f"1..{room}")
    return requested, source


def _prompt(req: ChatCompletionRequest | CompletionRequest) -> tuple[tuple[Message, ...], str | tuple[int, ...] | None]:
    if isinstance(req, ChatCompletionRequest):
        return tuple(Message(m.role, m.text()) for m in req.messages), None
    prompt: Any = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
        prompt = prompt[0]  # a batch of exactly one prompt
    return (), prompt if isinstance(prompt, str) else tuple(int(t) for t in prompt)


def resolve_request(body: ChatCompletionRequest | CompletionRequest | dict[str, Any], defaults: NodeDefaults, *,
                    prompt_tokens: int) -> ResolvedRequest:
    """The request as it will run: `body` (a parsed request or its JSON object) with every omitted
    field filled from `defaults`, checked against the context. Pure; raises RequestError."""
    req = prompting.parse_request(body) if isinstance(body, dict) else body
    check_request_shape(req)
    max_tokens, source = _max_tokens(req, defaults, prompt_tokens)
    logprobs, top_n, _ = prompting.logprob_options(req)
    params = prompting.sampling_params(req, max_tokens)
    messages, prompt = _prompt(req)
    return ResolvedRequest(
        endpoint="chat" if isinstance(req, ChatCompletionRequest) else "completion", model=req.model,
        prompt_tokens=prompt_tokens, max_tokens=max_tokens, max_tokens_source=source,
        temperature=float(params.temperature), top_p=float(params.top_p), seed=params.seed, stop=params.stop,
        ignore_eos=params.ignore_eos, stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        logprobs=logprobs, top_logprobs=top_n, user=req.user, messages=messages, prompt=prompt,
    )


__all__ = ["Message", "NodeDefaults", "ResolvedRequest", "check_request_shape",
           "resolve_request"]
