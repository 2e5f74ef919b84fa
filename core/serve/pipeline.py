"""One request's typed path through the node: prepare -> generate -> finalize (seal and receipt).

`prepare` turns a parsed request into prompt ids and SamplingParams, refusing (RequestError,
HTTP 4xx) anything the model cannot do. `GenerationRun` hands the request to the node's batch
scheduler (built-in engine: one batched forward per iteration over every running request) or runs
its engine in a thread of its own (other engines), and passes its events to the event loop through
an asyncio.Queue; the generation slot is released when the request has left the scheduler or the
engine has stopped, so a disconnected client frees its slot exactly when the model is done with it.
`finalize` builds the response body, lets plugins add evidence, signs and logs the receipt, and
stores the exact body the receipt hashes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request

from ..attest.receipts import new_receipt_secret
from ..errors import PluginError, RequestError
from ..openai import prompting
from ..openai.format import TokenText, chat_body, completion_body
from ..openai.resolved import ResolvedRequest, check_request_shape, resolve_request
from ..openai.schema import ChatCompletionRequest, CompletionRequest, dump_request
from ..plugin_manager import pm
from ..transcript import SamplingParams, Step, Transcript
from ..web.errors import ContextLengthError, ModelNotFoundError
from .generator import GenerationJob
from .node import Node

#: an item a generation reports: ("event", StepEvent), ("done", Transcript) or ("error", exception)
Item = tuple[str, Any]

log = logging.getLogger("specguard.server")


@dataclass
class Prepared:
    """A validated request, ready to run."""

    kind: Literal["chat", "completion"]
    request_obj: dict[str, Any]
    resolved: ResolvedRequest
    prompt_ids: list[int]
    params: SamplingParams
    top_n: int
    logprobs: bool
    completion_logprobs: int | None
    stream: bool
    include_usage: bool
    response_id: str
    created: int
    model_name: str
    admitted_at: float = field(default_factory=time.perf_counter)


def _check_model(node: Node, name: str) -> None:
    if name not in (node.served_model_name, node.model.name):
        raise ModelNotFoundError(f"the model {name!r} is not served here; GET /v1/models lists the served model",
                                 field="model", got=name, expected=node.served_model_name)


class PromptTooLargeError(RequestError):
    """The prompt is larger than this node accepts, refused before tokenizing (HTTP 400)."""

    code = "prompt_too_large"


def check_prompt_size(node: Node, req: ChatCompletionRequest | CompletionRequest) -> None:
    """Refuse an oversized prompt by counting characters (or token ids), before any tokenizing.

    Cheap and bounded: runs on the event loop before admission, so a 15 MiB prompt costs a
    length check, not a tokenizer pass. The limit is `node.max_prompt_chars` characters of all
    message contents together (chat) or of the prompt text, and the context length for token ids.
    """
    limit = int(node.max_prompt_chars or 0)
    if isinstance(req, ChatCompletionRequest):
        size = sum(len(m.text()) for m in req.messages)
        field_name, unit = "messages", "characters"
    else:
        prompt: Any = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            size, field_name, unit = len(prompt), "prompt", "characters"
        else:  # token ids: the context length is the bound (the same answer prepare() would give)
            context = int(node.max_context)
            if len(prompt) >= context:
                raise ContextLengthError(
                    f"the prompt has {len(prompt)} tokens but this model's context length is {context} tokens "
                    f"(room is needed for at least one generated token)", field="prompt",
                    got=len(prompt), expected=f"< {context}")
            return
    if limit and size > limit:
        raise PromptTooLargeError(f"the prompt has {size} {unit}; this server accepts at most {limit} "
                                  f"(refused before tokenizing)", field=field_name, got=size,
                                  expected=f"<= {limit} {unit}")


def prepare(node: Node, req: ChatCompletionRequest | CompletionRequest) -> Prepared:
    """Validate one request against the node's model and policy; plugins see the resolved request."""
    kind: Literal["chat", "completion"] = "chat" if isinstance(req, ChatCompletionRequest) else "completion"
    _check_model(node, req.model)
    check_request_shape(req)
    prompt_ids = prompting.prompt_ids(node.model, req)
    if not prompt_ids:
        raise RequestError("the prompt is empty after tokenization", field="messages" if kind == "chat" else "prompt")
    resolved = resolve_request(req, node.request_defaults, prompt_tokens=len(prompt_ids))
    pm.hook.check_request(request=resolved, policy=node.policy)
    _, _, completion_lp = prompting.logprob_options(req)
    return Prepared(
        kind=kind, request_obj=dump_request(req), resolved=resolved, prompt_ids=prompt_ids,
        params=resolved.sampling_params(), top_n=resolved.top_logprobs, logprobs=resolved.logprobs,
        completion_logprobs=completion_lp, stream=resolved.stream, include_usage=resolved.include_usage,
        response_id=("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex, created=int(time.time()),
        model_name=node.served_model_name,
    )


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


class GenerationRun:
    """One request generating (batched, or in a worker thread); events arrive on `queue`.

    Items are ("event", StepEvent), then ("done", Transcript) or ("error", exception).
    The caller must have taken a slot from `node.limiter`; it is released after the last item.
    Setting `cancel` stops the request before its next step (finish_reason "cancelled").
    """

    def __init__(self, node: Node, prep: Prepared) -> None:
        self.node = node
        self.prep = prep
        self.cancel = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._next_check = time.monotonic() + 0.25

    def start(self) -> None:
        """Hand the request to the node's generator (batched or threaded, chosen when the node was built)."""
        prep = self.prep
        self.node.generator.submit(GenerationJob(prep.response_id, prep.prompt_ids, prep.params, self._emit,
                                                 top_logprobs=prep.top_n, on_step=self._on_step,
                                                 should_stop=self.cancel.is_set))

    def _emit(self, kind: str, value: Any) -> None:
        self._put((kind, value))
        if kind in ("done", "error"):
            self._release()

    def _release(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.node.limiter.release)
        except RuntimeError:
            pass

    def _on_step(self, step: Step) -> None:
        pm.hook.on_step(request=self.prep.resolved, step=step)

    def _put(self, item: Item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed (server shutting down)
            pass

    async def next(self, request: Request | None = None, poll: float = 0.25) -> Item:
        """The next item; with `request`, raise ClientGone (and stop the engine) if the client left.

        The client is checked at least every `poll` seconds, also while events keep arriving.
        """
        while True:
            if request is not None and time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + poll
                if await request.is_disconnected():
                    self.cancel.set()
                    raise ClientGone()
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=poll)
            except TimeoutError:
                continue

    async def collect(self, request: Request, events: list[Item] | None = None) -> Transcript:
        """Run to the end; with `events`, keep every step event (a held-back stream replays them)."""
        while True:
            kind, value = await self.next(request)
            if kind == "done":
                return value
            if kind == "error":
                raise value
            if events is not None:
                events.append((kind, value))


@dataclass
class Finalized:
    """A response ready to leave: its body, receipt id and `specguard` object, and the requester's token."""

    body: dict[str, Any]
    receipt_id: str | None
    specguard: dict[str, Any]
    receipt_seconds: float
    response_token: str | None = None


class NoReceiptError(RequestError):
    """The node's policy must judge this response (consensus), but no receipt was issued (HTTP 503)."""

    http_status = 503
    code = "no_receipt"


def build_body(node: Node, prep: Prepared, transcript: Transcript, text_of: TokenText) -> dict[str, Any]:
    if prep.kind == "chat":
        return chat_body(transcript, response_id=prep.response_id, created=prep.created, model=prep.model_name,
                         logprobs=prep.logprobs, top_n=prep.top_n, text_of=text_of)
    return completion_body(transcript, response_id=prep.response_id, created=prep.created, model=prep.model_name,
                           logprobs=prep.completion_logprobs, text_of=text_of)


def finalize(node: Node, prep: Prepared, transcript: Transcript, text_of: TokenText) -> Finalized:
    """Body, evidence, receipt (`issue_receipt` hook), judges, then the stored body.

    Runs in a worker thread (disk and plugins block). The body is stored only once every judge
    has passed: a response a judge withholds or fails (e.g. no consensus quorum) is never stored,
    so it can never be fetched. The stored body is readable only with the per-response secret
    returned here (`response_token`), which goes to the requester alone.
    """
    body = build_body(node, prep, transcript, text_of)
    start = time.perf_counter()
    evidence: dict[str, Any] = {}
    receipt_id = uuid.uuid4().hex  # chosen first: evidence (commitment proofs) binds it
    transcript.salt = new_receipt_secret()  # the requester's secret: salts what the public receipt shows
    pm.hook.seal_transcript(transcript=transcript, evidence=evidence, node=node, receipt_id=receipt_id)
    receipt = pm.hook.issue_receipt(transcript=transcript, request=prep.request_obj, response=body,
                                    evidence=evidence, node=node, receipt_id=receipt_id)
    seconds = time.perf_counter() - start
    specguard: dict[str, Any] = {"prompt_ids": list(transcript.prompt_ids),
                                 "output_ids": list(transcript.output_ids)}
    if not isinstance(receipt, dict):
        if node.hold_streams:  # a judge must decide, and judges need a receipt
            raise NoReceiptError("this node's policy requires a judged (consensus) response, but no receipt "
                                 "plugin issued a receipt", field="receipt", got=None,
                                 expected="a receipt from the issue_receipt hook")
        specguard["receipt_id"] = None
        return Finalized(body=body, receipt_id=None, specguard=specguard, receipt_seconds=seconds)
    if receipt.get("receipt_id") != receipt_id:  # evidence sealed for one id must not ride in another
        raise PluginError("the issue_receipt hook returned a receipt with another id than the one sealed",
                          field="receipt_id", got=receipt.get("receipt_id"), expected=receipt_id)
    node.metrics.receipts.inc()
    node.metrics.receipt_seconds.observe(seconds)
    specguard = {"receipt_id": receipt_id, "receipt": receipt, **specguard}
    for extra in pm.hook.judge_transcript(transcript=transcript, receipt=receipt, node=node,
                                          request=prep.request_obj, response=body):
        if isinstance(extra, dict):
            for key, value in extra.items():
                if key not in ("receipt_id", "receipt", "response_token"):
                    specguard[key] = value
    token = None
    if node.responses is not None:
        token = node.responses.new_token()
        node.responses.put(receipt_id, body, token)
        specguard["response_token"] = token
    return Finalized(body=body, receipt_id=receipt_id, specguard=specguard, receipt_seconds=seconds,
                     response_token=token)
