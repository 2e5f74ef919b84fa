"""`resolve_request`: one pure function fills every default of a request in, typed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from specguard.errors import RequestError
from specguard.openai.resolved import Message, NodeDefaults, ResolvedRequest, resolve_request
from specguard.web.errors import ContextLengthError

DEFAULTS = NodeDefaults(max_tokens=256, context_length=1024)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(("fields", "max_tokens", "source"), [
    ({}, 256, "node_default"),
    ({"max_tokens": None}, 256, "node_default"),
    ({"max_tokens": 300}, 300, "max_tokens"),
    ({"max_completion_tokens": 300}, 300, "max_completion_tokens"),
    ({"max_tokens": 7, "max_completion_tokens": 7}, 7, "max_completion_tokens"),
])
def test_chat_max_tokens_is_resolved_from_whichever_field(fields, max_tokens, source):
    resolved = resolve_request(chat(**fields), DEFAULTS, prompt_tokens=10)
    assert (resolved.max_tokens, resolved.max_tokens_source) == (max_tokens, source)
    assert resolved.sampling_params().max_tokens == max_tokens


def test_the_node_default_is_capped_by_the_room_the_context_leaves():
    resolved = resolve_request(chat(), DEFAULTS, prompt_tokens=1000)
    assert resolved.max_tokens == 24 and resolved.max_tokens_source == "node_default"


def test_completion_defaults():
    omitted = resolve_request({"model": "m", "prompt": "hi"}, DEFAULTS, prompt_tokens=2)
    assert (omitted.max_tokens, omitted.max_tokens_source) == (16, "completion_default")
    assert omitted.endpoint == "completion" and omitted.prompt == "hi" and omitted.messages == ()
    ids = resolve_request({"model": "m", "prompt": [[5, 6]], "max_tokens": None, "logprobs": 2}, DEFAULTS,
                          prompt_tokens=2)
    assert ids.prompt == (5, 6) and ids.max_tokens_source == "node_default"
    assert ids.logprobs and ids.top_logprobs == 2


def test_every_field_is_typed_and_filled():
    resolved = resolve_request(chat(stop="\n", seed=3, temperature=0, logprobs=True, top_logprobs=2,
                                    stream=True, stream_options={"include_usage": True}), DEFAULTS, prompt_tokens=4)
    assert isinstance(resolved, ResolvedRequest)
    assert resolved.messages == (Message("user", "hi"),) and resolved.prompt is None
    assert resolved.stop == ("\n",) and resolved.seed == 3 and resolved.temperature == 0.0 and resolved.top_p == 1.0
    assert resolved.logprobs and resolved.top_logprobs == 2 and resolved.stream and resolved.include_usage
    assert resolved.to_json()["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.max_tokens = 10**6  # type: ignore[misc]


def test_pure_same_input_same_output():
    assert resolve_request(chat(), DEFAULTS, prompt_tokens=9) == resolve_request(chat(), DEFAULTS, prompt_tokens=9)


@pytest.mark.parametrize(("fields", "prompt_tokens", "error", "field"), [
    ({"max_tokens": 5, "max_completion_tokens": 6}, 4, RequestError, "max_completion_tokens"),
    ({"max_tokens": 1021}, 4, ContextLengthError, "max_tokens"),
    ({"max_completion_tokens": 1021}, 4, ContextLengthError, "max_tokens"),
    ({}, 1024, ContextLengthError, "messages/prompt"),
    ({"top_logprobs": 2}, 4, RequestError, "top_logprobs"),
])
def test_what_cannot_run_is_refused_naming_the_field(fields, prompt_tokens, error, field):
    with pytest.raises(error) as info:
        resolve_request(chat(**fields), DEFAULTS, prompt_tokens=prompt_tokens)
    assert info.value.field == field
