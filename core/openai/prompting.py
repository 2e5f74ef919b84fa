"""Request -> prompt ids and sampling parameters: the one code path the server and verifiers share.

The serving node (`generation.prepare`) and every consensus verifier
(`specguard.consensus.service`) turn a client's OpenAI request into prompt token ids through the
pinned tokenizer and chat template, and into `SamplingParams`, with these functions. A verifier
that re-runs them on the request the client sent can tell whether the node generated from that
request or from another (an injected system prompt, changed parameters).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError

from ..attest.request_defaults import params_from_request
from ..errors import RequestError
from ..transcript import SamplingParams
from .schema import ChatCompletionRequest, CompletionRequest


def parse_request(obj: Any) -> ChatCompletionRequest | CompletionRequest:
    """The request model of a request object: chat when it has `messages`, completion otherwise.

    Raises RequestError naming the first invalid field.
    """
    if not isinstance(obj, dict):
        raise RequestError("request must be a JSON object", field="request", got=type(obj).__name__)
    cls = ChatCompletionRequest if "messages" in obj else CompletionRequest
    try:
        return cls.model_validate(obj)
    except PydanticValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        message = str(first.get("msg", "does not validate")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = f"'{where}' is not supported by this server"
        raise RequestError(f"invalid request: {message}", field=f"request.{where}",
                           got=str(first.get("input"))[:200]) from exc


def request_kind(req: ChatCompletionRequest | CompletionRequest) -> str:
    """"chat" or "completion"."""
    return "chat" if isinstance(req, ChatCompletionRequest) else "completion"


def chat_prompt_ids(model: Any, req: ChatCompletionRequest) -> list[int]:
    """The chat messages through the model's chat template (with the generation prompt)."""
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        return model.encode_chat(messages)
    except Exception as exc:  # the chat template is user-facing input handling: any failure is the request's
        raise RequestError(f"cannot apply the model's chat template to these messages: {exc}"[:300],
                           field="messages") from exc


def completion_prompt_ids(model: Any, req: CompletionRequest) -> list[int]:
    """A completion prompt (text, token ids, or a batch of exactly one of either) as token ids."""
    prompt: Any = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
        prompt = prompt[0]  # a batch of exactly one prompt
    if isinstance(prompt, str):
        return model.encode(prompt)
    vocab = model.vocab_size
    bad = next((t for t in prompt if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError("prompt token id outside the vocabulary", field="prompt", got=bad,
                           expected=f"0..{vocab - 1}")
    return [int(t) for t in prompt]


def prompt_ids(model: Any, req: ChatCompletionRequest | CompletionRequest) -> list[int]:
    """The prompt token ids of either kind of request."""
    if isinstance(req, ChatCompletionRequest):
        return chat_prompt_ids(model, req)
    return completion_prompt_ids(model, req)


def requested_max_tokens(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """The max_tokens the client asked for (chat: max_completion_tokens or max_tokens), or None."""
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens


def logprob_options(req: ChatCompletionRequest | CompletionRequest) -> tuple[bool, int, int | None]:
    """(chat logprobs on, top-k alternatives per token, completion `logprobs` value) of a request."""
    if isinstance(req, ChatCompletionRequest):
        on = bool(req.logprobs)
        return on, (req.top_logprobs or 0) if on else 0, None
    return req.logprobs is not None, req.logprobs or 0, req.logprobs


def sampling_params(req: ChatCompletionRequest | CompletionRequest, max_tokens: int) -> SamplingParams:
    """The decoding parameters of a request, with `max_tokens` already resolved against the context
    (`specguard.attest.request_defaults`, the one rule verifiers check against)."""
    return params_from_request(req.model_dump(mode="json"), max_tokens)
