"""Build OpenAI response bodies (and their logprobs) from a Transcript.

Token strings are the tokenizer's decoding of each single token; `bytes` are their UTF-8
bytes. Log-probabilities are rounded to `LOGPROB_DECIMALS`, the precision the receipt signs.
"""

from __future__ import annotations

from typing import Any

from ..models import LoadedModel
from ..transcript import LOGPROB_DECIMALS, TokenRecord, Transcript


class TokenText:
    """Cached per-token strings of one model (decoding one token id at a time)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            try:
                text = self.model.tokenizer.decode([token_id], skip_special_tokens=False)
            except Exception:  # a tokenizer that cannot decode one id alone: show the id
                text = f"<{token_id}>"
            if not isinstance(text, str):
                text = str(text)
            if len(self._cache) < 200_000:
                self._cache[token_id] = text
        return text


def _lp(value: float) -> float:
    return round(float(value), LOGPROB_DECIMALS)


def chat_logprobs(records: list[TokenRecord], top_n: int, text_of: TokenText) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion."""
    content = []
    for rec in records:
        tok = text_of(rec.token_id)
        content.append({
            "token": tok,
            "logprob": _lp(rec.logprob),
            "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [
                {"token": text_of(t), "logprob": _lp(lp), "bytes": list(text_of(t).encode("utf-8"))}
                for t, lp in rec.top[:top_n]
            ],
        })
    return {"content": content}


def completion_logprobs(records: list[TokenRecord], top_n: int, text_of: TokenText, offset: int = 0) -> dict[str, Any]:
    """`choices[i].logprobs` of a legacy completion; `offset` is where the first token's text starts."""
    tokens, token_lps, tops, offsets = [], [], [], []
    pos = offset
    for rec in records:
        tok = text_of(rec.token_id)
        tokens.append(tok)
        token_lps.append(_lp(rec.logprob))
        top: dict[str, float] = {}
        for t, lp in rec.top[:top_n]:
            top.setdefault(text_of(t), _lp(lp))
        tops.append(top)
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def usage(transcript: Transcript) -> dict[str, int]:
    prompt, completion = len(transcript.prompt_ids), len(transcript.output_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(transcript: Transcript) -> str:
    """OpenAI finish reasons are "stop" or "length" ("cancelled" never reaches a client)."""
    return "stop" if transcript.finish_reason == "stop" else "length"


def chat_body(transcript: Transcript, *, response_id: str, created: int, model: str, logprobs: bool,
              top_n: int, text_of: TokenText) -> dict[str, Any]:
    """The non-streaming chat completion body (also what a stream's receipt hashes)."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": transcript.text},
        "logprobs": chat_logprobs(transcript.tokens, top_n, text_of) if logprobs else None,
        "finish_reason": finish_reason(transcript),
    }
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(transcript),
        "system_fingerprint": system_fingerprint(transcript),
    }


def completion_body(transcript: Transcript, *, response_id: str, created: int, model: str, logprobs: int | None,
                    text_of: TokenText) -> dict[str, Any]:
    """The non-streaming completion body (also what a stream's receipt hashes)."""
    choice: dict[str, Any] = {
        "index": 0,
        "text": transcript.text,
        "logprobs": completion_logprobs(transcript.tokens, logprobs, text_of) if logprobs is not None else None,
        "finish_reason": finish_reason(transcript),
    }
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(transcript),
        "system_fingerprint": system_fingerprint(transcript),
    }


def system_fingerprint(transcript: Transcript) -> str:
    """A short, stable name of the model weights (OpenAI's `system_fingerprint`)."""
    return "sg-" + transcript.model_digest.split(":", 1)[-1][:16]
