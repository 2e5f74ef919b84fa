"""Request models of the OpenAI-compatible API (pydantic, strict types).

Strict mode: a string where a number is expected is an error, not a coercion. Unknown fields
are refused, so a client never believes an unsupported option (tools, logit_bias...) took
effect. Ranges that depend on the model (max_tokens vs the context) are checked by the server
after tokenizing the prompt.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_STOP = 4
SEED_MAX = 2**63 - 1

_STRICT = ConfigDict(strict=True, extra="forbid")

StopString = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: StrictBool = False


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One message. `content` is a string or a list of text parts (other part types are refused)."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(BaseModel):
    model_config = _STRICT
    model: StrictStr = Field(description="The served model name (GET /v1/models).")
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Upper bound on generated tokens; 1..(context length - prompt tokens).")
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = 1.0
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = Field(1, description="Only n = 1 is supported.")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Annotated[StrictInt, Field(ge=0, le=SEED_MAX)] | None = Field(
        None, description="Seed for sampled decoding; drawn by the server (and recorded in the receipt) if absent.")
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = Field(
        None, description="Only 0 is supported (penalties would change what the target verifies).")
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = Field(None, description="Only 0 is supported.")
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    ignore_eos: StrictBool | None = Field(
        False, description="specguard/vLLM extension: keep generating past EOS up to max_tokens (fixed-length "
                           "outputs for benchmarks). Recorded in the receipt's sampling parameters.")

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Alias of max_tokens (newer OpenAI clients send this).")
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None


TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    """POST /v1/completions. `prompt` is a string or a list of token ids (one prompt per request)."""

    prompt: (Annotated[StrictStr, Field(min_length=1)] | TokenIds
             | Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1, max_length=1)]
             | Annotated[list[TokenIds], Field(min_length=1, max_length=1)])
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(
        16, description="Upper bound on generated tokens (default 16, as in OpenAI).")
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: Annotated[StrictBool, Field(description="Only false is supported.")] | None = False
    best_of: Annotated[StrictInt, Field(ge=1, le=1)] | None = None
    suffix: None = None


def dump_request(req: BaseModel) -> dict[str, Any]:
    """The canonical request object: every field with its default filled in (what the receipt's
    request_digest covers)."""
    return req.model_dump(mode="json")
