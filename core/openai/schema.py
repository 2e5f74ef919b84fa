"""Request models of the OpenAI-compatible API (pydantic, strict types).

Strict mode: a string where a number is expected is an error, not a coercion. Unknown fields
are refused ("'x' is not supported by this server"), so a client never believes an unsupported
option took effect. OpenAI options this server cannot honour are accepted only with `null` or a
value that provably changes nothing (`tools: []`, `logit_bias: {}`, `response_format: {"type":
"text"}`, `store: false`, `metadata: {}`, `parallel_tool_calls`...); any other value is refused
with a message naming the feature ("tools are not supported"). Accepted no-op fields are left
out of the canonical request (`dump_request`), so a receipt never claims an option that was
ignored. Ranges that depend on the model (max_tokens vs the context) are checked by the server
after tokenizing the prompt.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

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


def _no_op(description: str) -> Any:
    """A field accepted only with a value that changes nothing; never part of the canonical request."""
    return Field(None, exclude=True, description=description)


class _NoOpOptions(BaseModel):
    """OpenAI options accepted only as null or a provable no-op (left out of receipts)."""

    model_config = _STRICT
    logit_bias: dict[StrictStr, float] | None = _no_op("Only {} (or all-zero biases): biases would change what "
                                                       "the target verifies.")
    store: StrictBool | None = _no_op("Only false: this server keeps no completions for distillation or evals.")
    metadata: dict[StrictStr, StrictStr] | None = _no_op("Only {} (metadata is for stored completions).")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and any(v != 0 for v in value.values()):
            raise ValueError("logit_bias is not supported (it would change what the target model verifies); "
                             "send {} or leave it out")
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("store: true is not supported (no stored completions for distillation or evals)")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value:
            raise ValueError("metadata is not supported (it belongs to stored completions); send {} or leave it out")
        return value


class _Sampling(_NoOpOptions):
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

    tools: list[Any] | None = _no_op("Only [] or null: tools are not supported.")
    tool_choice: Literal["none", "auto"] | None = _no_op("Only \"none\", \"auto\" (with no tools) or null.")
    parallel_tool_calls: StrictBool | None = _no_op("Accepted and ignored: there are no tools to call.")
    functions: list[Any] | None = _no_op("Only [] or null: functions are not supported.")
    function_call: Literal["none", "auto"] | None = _no_op("Only \"none\", \"auto\" or null.")
    response_format: dict[StrictStr, Any] | None = _no_op("Only {\"type\": \"text\"}: structured outputs are "
                                                          "not supported.")

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Alias of max_tokens (newer OpenAI clients send this).")
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tools are not supported (this server does not call functions); send [] or leave "
                             "them out")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value != {"type": "text"}:
            raise ValueError(f"response_format {str(value.get('type'))!r} is not supported (only {{\"type\": "
                             f"\"text\"}}: no JSON mode or structured outputs)")
        return value


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
