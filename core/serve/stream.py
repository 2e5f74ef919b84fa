"""The server-sent-event body of a streamed completion.

Live streams turn engine events into chunks as they arrive and finalize (receipt, judges) after
the last token; held streams (a policy that may still refuse the response) were finalized before
the first byte and replay their events. A failure after the first byte is reported in-band (an
error chunk, then `[DONE]`); a client that leaves stops its generation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio

from ..errors import SpecguardError
from ..openai.format import TokenText, finish_reason, usage
from ..openai.streaming import DONE, ChunkMaker, TextDeltas, sse
from ..transcript import Transcript
from ..web.errors import error_body, status_of
from .node import Node
from .pipeline import Finalized, Item, Prepared, finalize

log = logging.getLogger("specguard.server")

NextItem = Callable[[], Awaitable[Item]]


@dataclass(frozen=True)
class ServeState:
    """What the routes of a serving node read from `app.state.serve`."""

    node: Node
    text_of: TokenText
    #: whether a plugin issues receipts (the receipts layer is loaded)
    with_receipts: bool
    auth_enabled: bool

    def count(self, prep: Prepared, transcript: Transcript) -> None:
        """Metrics of one finished request."""
        metrics = self.node.metrics
        metrics.request_success.inc(finish_reason=finish_reason(transcript))
        metrics.observe_transcript(transcript)
        metrics.e2e_latency.observe(time.perf_counter() - prep.admitted_at)

    async def finalize(self, prep: Prepared, transcript: Transcript) -> Finalized:
        """Receipt, judges and stored body (in a worker thread: disk and plugins block), then metrics."""
        done = await anyio.to_thread.run_sync(finalize, self.node, prep, transcript, self.text_of)
        self.count(prep, transcript)
        return done


async def sse_body(state: ServeState, next_item: NextItem, prep: Prepared, first: Item,
                   done: Finalized | None = None, cancel: threading.Event | None = None) -> AsyncIterator[bytes]:
    """SSE chunks from engine events; `done` is given when the response was finalized (and judged)
    before streaming (held streams), else finalize runs after the last token."""
    metrics = state.node.metrics
    finished = False
    try:
        async for chunk in _chunks(state, next_item, prep, first, done):
            yield chunk
        finished = True
    except SpecguardError as exc:
        finished = True
        metrics.requests_rejected.inc(reason=getattr(exc, "code", None) or type(exc).__name__)
        yield sse(error_body(status_of(exc), exc.summary(), exc.field, type(exc).__name__))
        yield DONE
    except Exception as exc:  # a bug: tell the client in-band and keep serving
        finished = True
        log.exception("stream %s failed", prep.response_id)
        metrics.requests_rejected.inc(reason="internal_error")
        yield sse(error_body(500, f"internal server error ({type(exc).__name__})", None, "internal_error"))
        yield DONE
    finally:
        if not finished:  # the client left: stop the engine (if still running); its thread frees the slot
            if cancel is not None:
                cancel.set()
            metrics.requests_rejected.inc(reason="client_disconnected")


async def _chunks(state: ServeState, next_item: NextItem, prep: Prepared, first: Item,
                  done: Finalized | None) -> AsyncIterator[bytes]:
    node = state.node
    maker = ChunkMaker(prep.kind, prep.response_id, prep.created, prep.model_name,
                       "sg-" + node.model.digest.split(":", 1)[-1][:16], prep.logprobs, prep.top_n, state.text_of)
    deltas = TextDeltas(node.model, prep.params.stop)
    if prep.kind == "chat":
        yield sse(maker.role())
    item: Item | None = first
    ttft_seen = done is not None
    while True:
        kind, value = item if item is not None else await next_item()
        item = None
        if kind == "error":
            raise value
        if kind == "done":
            transcript: Transcript = value
            break
        if not ttft_seen and value.tokens:
            node.metrics.ttft.observe(time.perf_counter() - prep.admitted_at)
            ttft_seen = True
        text = deltas.push([r.token_id for r in value.tokens])
        if text or (prep.logprobs and value.tokens):
            yield sse(maker.delta(text, value.tokens))
    tail = deltas.finish(transcript.text)
    if tail:
        yield sse(maker.delta(tail, []))
    if done is None:
        done = await state.finalize(prep, transcript)
    last = maker.finish(finish_reason(transcript))
    if prep.include_usage:
        yield sse(last)
        last = maker.usage(usage(transcript))
    last["specguard"] = done.specguard
    yield sse(last)
    yield DONE


__all__ = ["NextItem", "ServeState", "sse_body"]
