"""The OpenAI body `specguard serve` sends for a transcript, built with the server's own code,
for tests and bench scripts that play a serving node without running one."""

from __future__ import annotations

from typing import Any

from specguard.openai import prompting
from specguard.openai.format import TokenText, chat_body, completion_body
from specguard.transcript import Transcript


def response_body(model: Any, request_obj: dict[str, Any], transcript: Transcript, *, served_name: str,
                  response_id: str, created: int = 1_700_000_000) -> dict[str, Any]:
    """The chat or completion body for `transcript` answering `request_obj` (format.chat_body /
    completion_body, with the logprob options the request asked for)."""
    req = prompting.parse_request(request_obj)
    logprobs, top_n, completion_lp = prompting.logprob_options(req)
    text_of = TokenText(model)
    if prompting.request_kind(req) == "chat":
        return chat_body(transcript, response_id=response_id, created=created, model=served_name,
                         logprobs=logprobs, top_n=top_n, text_of=text_of)
    return completion_body(transcript, response_id=response_id, created=created, model=served_name,
                           logprobs=completion_lp, text_of=text_of)
