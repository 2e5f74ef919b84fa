"""What a serving node does for one request, in-process, for consensus tests.

`respond(model, issuer, request)` runs a request the way `specguard serve` does (the server's
own prompting and body code): prompt ids through the pinned tokenizer and template, sampling
parameters, generation, the OpenAI body, a signed and logged receipt over the canonical request
and the body. Attack tests start from its output and change one part, signing with the node key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from specguard.engine.speculative import SpeculativeEngine
from specguard.openai import prompting
from specguard.openai.schema import dump_request
from specguard.policies.model import policy_from_dict
from specguard.testing.responses import response_body
from specguard.transcript import Transcript


@dataclass
class Served:
    """One answered request: what the verifiers are sent."""

    transcript: Transcript
    receipt: dict[str, Any]
    request: dict[str, Any]
    response: dict[str, Any]

    def verify_body(self, nonce: str) -> dict[str, Any]:
        """The body of POST /specguard/v1/verify for these parts."""
        return {"transcript": self.transcript.to_json(include_steps=False), "receipt": self.receipt,
                "request": self.request, "response": self.response, "nonce": nonce}


def build_body(model: Any, request_obj: dict[str, Any], transcript: Transcript, response_id: str = "cmpl-test",
               created: int = 1_700_000_000, served_name: str = "tiny") -> dict[str, Any]:
    """The body the server sends for `transcript` (format.chat_body / completion_body)."""
    return response_body(model, request_obj, transcript, served_name=served_name, response_id=response_id,
                         created=created)


def generate(model: Any, request: dict[str, Any], prompt_ids: list[int] | None = None,
             default_max_tokens: int = 16) -> tuple[dict[str, Any], Transcript]:
    """(canonical request object, transcript) for `request`; `prompt_ids` overrides the prompt (an attack)."""
    req = prompting.parse_request(request)
    ids = prompting.prompt_ids(model, req) if prompt_ids is None else list(prompt_ids)
    requested = prompting.requested_max_tokens(req)
    params = prompting.sampling_params(req, requested or min(default_max_tokens, model.max_context - len(ids)))
    _, top_n, _ = prompting.logprob_options(req)
    transcript = SpeculativeEngine(model).generate(ids, params, top_logprobs=top_n)
    return dump_request(req), transcript


def issue(issuer: Any, transcript: Transcript, request_obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A signed, logged receipt over `request_obj` and `body` (what a node, honest or not, signs)."""
    return issuer.issue(transcript, request_obj, body, {}, policy_from_dict({"name": "test"}))


def respond(model: Any, issuer: Any, request: dict[str, Any], **body_kw: Any) -> Served:
    """An honest node's answer to `request`."""
    request_obj, transcript = generate(model, request)
    body = build_body(model, request_obj, transcript, **body_kw)
    return Served(transcript, issue(issuer, transcript, request_obj, body), request_obj, body)


def answer(model: Any, issuer: Any, request_obj: dict[str, Any], transcript: Transcript, **body_kw: Any) -> Served:
    """A node's consistent answer with `transcript` (honest or not): the body shows the decoding
    of its output ids (stop-trimmed), as the server would, and the receipt signs request and body."""
    from specguard.engine.stops import cut_text

    text = model.decode(list(transcript.output_ids))
    if transcript.params.stop and transcript.finish_reason == "stop":
        text = cut_text(text, transcript.params.stop)
    transcript = dataclasses.replace(transcript, text=text)
    body = build_body(model, request_obj, transcript, **body_kw)
    return Served(transcript, issue(issuer, transcript, request_obj, body), request_obj, body)
