"""Map a provider's returned tokens back to reference token ids, exactly or not at all.

Providers return each generated token as text plus (OpenAI `logprobs.content[].bytes`) its raw
UTF-8 bytes. A token maps when its bytes (or, without bytes, its text's UTF-8 bytes; or the
vLLM form `token_id:N`) equal the bytes of exactly one reference vocabulary entry. Anything
else is counted as unmappable and never guessed: scoring stops at the first unmappable position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table (byte-level BPE token strings -> bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return "ByteLevel" in type(backend.decoder).__name__ or "ByteLevel" in str(backend.decoder)


def vocab_bytes(tokenizer: Any, vocab_size: int) -> list[bytes | None]:
    """The raw bytes of every token id (None where the tokenizer cannot say)."""
    out: list[bytes | None] = []
    byte_level = _is_byte_level(tokenizer)
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= {t for t in (getattr(tokenizer, "special", None) or {}).values() if isinstance(t, str)}
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is None and getattr(tokenizer, "backend_tokenizer", None) is not None:
        convert = tokenizer.backend_tokenizer.id_to_token  # the llama.cpp runtime's FileTokenizer
    dec = _byte_decoder()
    for i in range(vocab_size):
        piece = convert(i) if convert is not None else None
        if piece is None:
            try:
                out.append(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
            except Exception:  # a tokenizer that cannot decode an id: unknown bytes
                out.append(None)
            continue
        if piece in special:
            out.append(piece.encode("utf-8"))
        elif byte_level and all(ch in dec for ch in piece):
            out.append(bytes(dec[ch] for ch in piece))
        elif m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


class TokenMap:
    """Bytes -> reference id lookup for one tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.bytes_of = vocab_bytes(tokenizer, vocab_size)
        index: dict[bytes, list[int]] = {}
        for i, b in enumerate(self.bytes_of):
            if b is not None:
                index.setdefault(b, []).append(i)
        self._index = index

    def lookup(self, entry: Any) -> tuple[int | None, str | None]:
        """(reference id, None) or (None, why) for one provider token entry (dict with token/bytes)."""
        if not isinstance(entry, dict):
            return None, "token entry is not an object"
        token = entry.get("token")
        raw = entry.get("bytes")
        if isinstance(token, str) and (m := _TOKEN_ID.match(token)):
            tid = int(m.group(1))
            return (tid, None) if tid < self.vocab_size else (None, f"token id {tid} outside the vocabulary")
        if isinstance(raw, list) and raw and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in raw):
            key = bytes(raw)
        elif isinstance(token, str) and token and "\ufffd" not in token:
            key = token.encode("utf-8")
        else:
            return None, "no usable token bytes or text"
        ids = self._index.get(key)
        if not ids:
            return None, "bytes match no reference token"
        if len(ids) > 1:
            return None, f"bytes match {len(ids)} reference tokens"
        return ids[0], None


@dataclass
class MappedTokens:
    """Provider tokens mapped to reference ids; `ids` stops before the first unmappable position."""

    ids: list[int]
    provider_logprobs: list[float | None]
    provider_top: list[dict[int, float]]
    total: int
    unmappable: int
    reasons: dict[str, int] = field(default_factory=dict)
    retokenized: bool = False

    @property
    def unscored(self) -> int:
        return self.total - len(self.ids)


def map_logprob_content(content: Any, tmap: TokenMap) -> MappedTokens:
    """Map OpenAI chat `logprobs.content` entries to reference ids (with their logprobs and top-k)."""
    entries = content if isinstance(content, list) else []
    ids: list[int] = []
    lps: list[float | None] = []
    tops: list[dict[int, float]] = []
    unmappable = 0
    reasons: dict[str, int] = {}
    stopped = False
    for entry in entries:
        tid, why = tmap.lookup(entry)
        if tid is None:
            unmappable += 1
            reasons[why or "unknown"] = reasons.get(why or "unknown", 0) + 1
            stopped = True
            continue
        if stopped:
            continue
        ids.append(tid)
        lp = entry.get("logprob")
        lps.append(float(lp) if isinstance(lp, int | float) and not isinstance(lp, bool) and lp == lp else None)
        top: dict[int, float] = {}
        for alt in entry.get("top_logprobs") or []:
            aid, _ = tmap.lookup(alt)
            alp = alt.get("logprob") if isinstance(alt, dict) else None
            if aid is not None and isinstance(alp, int | float) and not isinstance(alp, bool):
                top[aid] = float(alp)
        tops.append(top)
    return MappedTokens(ids, lps, tops, total=len(entries), unmappable=unmappable, reasons=reasons)


def retokenize_text(text: str, reference: Any) -> MappedTokens:
    """Token ids for a text-only answer: the reference tokenizer's encoding, kept only if it
    decodes back to exactly the same text (otherwise the whole answer counts as unmappable)."""
    try:
        ids = reference.encode(text) if text else []
        back = reference.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""
    except Exception:  # tokenizers raise assorted types on odd input: treat as unmappable
        return MappedTokens([], [], [], total=1, unmappable=1, reasons={"text does not tokenize": 1}, retokenized=True)
    if back != text:
        return MappedTokens([], [], [], total=max(1, len(ids)), unmappable=max(1, len(ids)),
                            reasons={"text does not round-trip through the reference tokenizer": 1}, retokenized=True)
    return MappedTokens(ids, [None] * len(ids), [{} for _ in ids], total=len(ids), unmappable=0, retokenized=True)
