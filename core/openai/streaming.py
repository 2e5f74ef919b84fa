"""Server-sent events in OpenAI's chunk format, and incremental text that never takes back bytes.

A stream is `data: <chunk JSON>\\n\\n` lines ending with `data: [DONE]\\n\\n`. Text deltas hold back
an incomplete UTF-8 character and any tail that could still become a stop string, so the
concatenated deltas always equal the final (stop-trimmed) text of the non-streaming body.
The last chunk before `[DONE]` carries the `specguard` object with the receipt; the receipt
hashes the assembled non-streaming body, which GET /specguard/v1/responses/{receipt_id} returns.
"""

from __future__ import annotations

import json
from typing import Any

from ..models import LoadedModel
from ..transcript import TokenRecord
from .format import TokenText, chat_logprobs, completion_logprobs

DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    """One SSE event carrying a JSON object."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


class TextDeltas:
    """Turn growing token ids into text deltas that are safe to send (see module docstring)."""

    def __init__(self, model: LoadedModel, stops: tuple[str, ...]) -> None:
        self.model = model
        self.stops = tuple(stops)
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        text = self.model.decode(self.ids)
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:  # never send a stop string or anything after it
            text = text[: min(hits)]
            safe = len(text)
        else:
            safe = len(text) - self.holdback
        while safe > 0 and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta = text[len(self.sent):safe]
        self.sent += delta
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the final text (the final text always extends what was sent)."""
        if final_text.startswith(self.sent):
            delta = final_text[len(self.sent):]
            self.sent = final_text
            return delta
        return ""


class ChunkMaker:
    """Chunks of one streamed response (chat or completion)."""

    def __init__(self, kind: str, response_id: str, created: int, model: str, fingerprint: str,
                 logprobs: bool, top_n: int, text_of: TokenText) -> None:
        self.kind = kind
        self.response_id = response_id
        self.created = created
        self.model = model
        self.fingerprint = fingerprint
        self.logprobs = logprobs
        self.top_n = top_n
        self.text_of = text_of
        self.text_offset = 0

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.response_id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": choices}

    def role(self) -> dict[str, Any]:
        """The opening chat chunk announcing the assistant role."""
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def delta(self, text: str, records: list[TokenRecord]) -> dict[str, Any]:
        lp: Any = None
        if self.logprobs and records:
            if self.kind == "chat":
                lp = chat_logprobs(records, self.top_n, self.text_of)
            else:
                lp = completion_logprobs(records, self.top_n, self.text_of, self.text_offset)
                self.text_offset += sum(len(t) for t in lp["tokens"])
        if self.kind == "chat":
            choice = {"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": None}
        return self._chunk([choice])

    def finish(self, finish_reason: str) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        return self._chunk([choice])

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        out = self._chunk([])
        out["usage"] = usage
        return out
