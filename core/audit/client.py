"""A robust client for OpenAI-compatible chat (and legacy completions) endpoints, with a raw append-only log.

Every attempt is appended to `raw.jsonl` as soon as its answer (or failure) arrives:
{"key", "attempt", "time", "request", "status", "retry_after", "body" | "error"}. The request
body is logged; headers (and so the API key, read from an environment variable) never are.
Retries: 429, 5xx, timeouts, connection errors and unparseable bodies, with exponential
backoff that honours Retry-After (capped). A request key is the digest of the canonical
request body, so a resumed audit reuses logged answers instead of re-querying.

Every exchange goes through specguard.web.http: a hard deadline for the whole exchange (a provider
that drips its headers cannot hold the audit past `timeout`), no env proxies, no redirects, a
byte cap, and URLs without credentials in every logged error. Every answer, fresh or read back
from the log on resume, is checked by `validate_answer` against what was asked before any of it
is used: a provider that breaks the contract is a recorded fault for that query, never a crash.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..canonical import json_digest
from ..errors import OutboundError
from ..web import http
from . import AuditError, AuditUsageError

log = logging.getLogger("specguard.audit.client")
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
#: audit modes: the path POSTed to under the base URL
ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions"}
#: a provider answer larger than this is a failed attempt
MAX_ANSWER_BYTES = 8 << 20


def request_key(body: dict[str, Any]) -> str:
    return json_digest(body)


def load_raw_log(path: Path) -> dict[str, dict[str, Any]]:
    """Last successfully parsed answer per request key from a raw log (bad lines are skipped)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by an interrupted write (or a hostile body Python cannot parse)
        if not isinstance(rec, dict) or rec.get("status") != 200 or not isinstance(rec.get("body"), str):
            continue
        try:
            parsed = json.loads(rec["body"])
        except (ValueError, RecursionError):
            continue
        if isinstance(parsed, dict) and isinstance(rec.get("key"), str):
            done[rec["key"]] = parsed
    return done


@dataclass(frozen=True)
class ClientOptions:
    """How a ProviderClient asks: the API key's variable, the endpoint, deadlines, retries and trust."""

    #: environment variable holding the API key (read once; never logged)
    api_key_env: str | None = None
    #: "chat" (/chat/completions) or "completions" (legacy /completions)
    endpoint: str = "chat"
    #: hard deadline in seconds for each request, retries included
    timeout: float = 60.0
    max_retries: int = 6
    #: first retry delay (doubled per attempt, jittered) and its cap, both in seconds
    backoff: float = 0.5
    max_backoff: float = 30.0
    #: how to wait between attempts (tests pass a recorder)
    sleep: Callable[[float], None] = time.sleep
    #: PEM file of the CAs to trust for this provider (default: the process's trust for its URL, `http.cacert_for`)
    cacert: str | None = None
    #: until the provider has answered once, 401/403/404 or nothing listening is a usage error
    setup_errors: bool = False

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise AuditUsageError("unknown endpoint", field="endpoint", got=self.endpoint, expected=list(ENDPOINTS))
        if not self.timeout > 0:
            raise AuditUsageError("timeout must be positive", field="timeout", got=self.timeout, expected="> 0 seconds")
        if self.max_retries < 0:
            raise AuditUsageError("max_retries must not be negative", field="max_retries", got=self.max_retries,
                                  expected=">= 0")


class ProviderClient:
    """POSTs chat completions with retries; appends every attempt to the raw log."""

    def __init__(self, base_url: str, model: str, *, log_path: Path, options: ClientOptions | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        opts = options or ClientOptions()
        headers = {"Content-Type": "application/json"}
        if opts.api_key_env:
            key = os.environ.get(opts.api_key_env)
            if not key:
                raise AuditUsageError("API key environment variable is not set", field="api_key_env",
                                      got=opts.api_key_env)
            headers["Authorization"] = f"Bearer {key}"
        self.options = opts
        self.endpoint = opts.endpoint
        self.url = base_url.rstrip("/") + ENDPOINTS[opts.endpoint]
        self.model = model
        self.log_path = log_path
        self.max_retries = opts.max_retries
        self.timeout = opts.timeout
        self._http = http.client(timeouts=http.Timeouts.of(opts.timeout), headers=headers, transport=transport,
                                 cacert=opts.cacert or http.cacert_for(self.url), max_connections=2)
        self.cache = load_raw_log(log_path)
        self.setup_errors = opts.setup_errors
        self._answered_once = bool(self.cache)
        self.stats = {"attempts": 0, "retries": 0, "failures": 0, "reused": 0, "http_errors": {}}

    def close(self) -> None:
        self._http.close()

    def _append(self, record: dict[str, Any]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a+b") as f:
            f.seek(0, os.SEEK_END)
            # a run killed mid-write leaves a cut last line: start on a fresh one, or this record is lost too
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        opts = self.options
        delay = min(opts.max_backoff, opts.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(opts.max_backoff, float(retry_after)))
            except ValueError:
                pass  # an HTTP-date Retry-After: keep the exponential delay
        opts.sleep(delay)

    def chat(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The parsed answer to `body` (from the log when already there), or None after all retries."""
        body = {"model": self.model, **body}
        key = request_key(body)
        if key in self.cache:
            self.stats["reused"] += 1
            return self.cache[key]
        for attempt in range(self.max_retries + 1):
            self.stats["attempts"] += 1
            rec: dict[str, Any] = {"key": key, "attempt": attempt, "time": time.time(), "request": body}
            retry_after = None
            try:
                resp = http.request(self._http, "POST", self.url, json=body, timeout=self.timeout,
                                    max_bytes=MAX_ANSWER_BYTES)
                rec["status"] = resp.status_code
                rec["body"] = resp.text
                retry_after = resp.headers.get("retry-after")
                rec["retry_after"] = retry_after
            except OutboundError as exc:  # deadline, size cap, refused: the message names the redacted URL
                rec["status"] = None
                rec["error"] = f"{type(exc).__name__}: {exc}"
            self._append(rec)
            status = rec["status"]
            if self.setup_errors and not self._answered_once:
                self._refuse_setup(status, rec.get("error"))
            if status is not None:
                errs = self.stats["http_errors"]
                if status != 200:
                    errs[str(status)] = errs.get(str(status), 0) + 1
            if status == 200:
                try:
                    parsed = json.loads(rec["body"])
                except (ValueError, RecursionError):
                    parsed = None
                    errs = self.stats["http_errors"]
                    errs["malformed"] = errs.get("malformed", 0) + 1
                if isinstance(parsed, dict):
                    self._answered_once = True
                    self.cache[key] = parsed
                    return parsed
            elif status is not None and status not in RETRYABLE:
                log.warning("provider answered %s (not retryable) for %s", status, key)
                break
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                self._wait(attempt, retry_after)
        self.stats["failures"] += 1
        return None


    def _refuse_setup(self, status: int | None, error: str | None) -> None:
        """A wrong URL, a missing key or no server at all is the auditor's to fix, not a verdict."""
        shown = http.redact_url(self.url)
        if status == 404:
            raise ProviderSetupError(f"the provider answered 404 Not Found for {shown}: is /v1 in the base URL "
                                     "(e.g. http://host:8000/v1)? is the --endpoint right?",
                                     field="base_url", got=shown, expected="an OpenAI-compatible base URL")
        if status in (401, 403):
            raise ProviderSetupError(f"the provider refused the request ({status}): set --api-key-env VAR to the "
                                     "environment variable holding the API key", field="api_key_env", got=status,
                                     expected="an accepted API key")
        if status is None and error and "ConnectError" in error:
            raise ProviderSetupError(f"nothing is listening at {shown}: is the server running, and the host and "
                                     "port right?", field="base_url",
                                     got=error.rsplit("got=", 1)[-1][:200])  # the cause, not the wrapper's fields


class ProviderSetupError(AuditUsageError):
    """The provider cannot be reached as configured (wrong URL, no API key, nothing listening): exit 2."""


# --- answer validation ---------------------------------------------------------------------------

#: per requested token, the most characters an answer's text (or one token's text) may have
MAX_CHARS_PER_TOKEN = 64
MAX_TOKEN_CHARS = 256
#: a logprob outside [MIN_LOGPROB, 0] (with a small tolerance above 0) is not a log-probability
MIN_LOGPROB = -1.0e5
_LOGPROB_SLACK = 1e-4


class ProviderFault(AuditError):
    """A provider's answer breaks the chat-completion contract for the query that was asked.

    Recorded in the run as a fault of that query (never retried, never a crash)."""


@dataclass(frozen=True)
class ProviderAnswer:
    """The fields of a validated answer the audit uses."""

    content: str
    logprobs: list[dict[str, Any]] | None
    finish_reason: str | None


def _fault(message: str, field: str, got: Any, expected: Any) -> ProviderFault:
    return ProviderFault(message, field=field, got=repr(got)[:120], expected=expected)


def _bounded_int(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _check_logprob(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fault("logprob is not a number", where, value, "a number")
    try:
        number = float(value)  # a 400-digit integer overflows here
    except OverflowError:
        raise _fault("logprob out of range", where, value, f"a number in [{MIN_LOGPROB:g}, 0]") from None
    if not math.isfinite(number) or not (MIN_LOGPROB <= number <= _LOGPROB_SLACK):
        raise _fault("logprob out of range", where, value, f"a finite number in [{MIN_LOGPROB:g}, 0]")
    return min(number, 0.0)


def _check_token(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise _fault("token entry is not an object", where, entry, '{"token", "logprob", "bytes"}')
    token = entry.get("token")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise _fault("token is not a short string", f"{where}.token", token, f"a string of <= {MAX_TOKEN_CHARS} chars")
    raw = entry.get("bytes")
    if raw is not None and (not isinstance(raw, list) or len(raw) > 4 * MAX_TOKEN_CHARS
                            or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in raw)):
        raise _fault("token bytes are not a short list of bytes", f"{where}.bytes", raw, "null or [0..255] (short)")
    return {"token": token, "bytes": raw, "logprob": _check_logprob(entry.get("logprob"), f"{where}.logprob")}


def _first_choice(answer: Any, request: dict[str, Any], kind: str) -> dict[str, Any]:
    """`choices[0]` of an answer object (as many choices as the request's `n`), or a ProviderFault."""
    if not isinstance(answer, dict):
        raise _fault("answer is not an object", "answer", type(answer).__name__, kind)
    choices = answer.get("choices")
    if not isinstance(choices, list) or not 1 <= len(choices) <= max(1, _bounded_int(request, "n", 1)):
        raise _fault("answer has no (or too many) choices", "choices", choices, "a list of one choice")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise _fault("choice is not an object", "choices[0]", choice, "an object")
    return choice


def _check_text_and_finish(choice: dict[str, Any], content: str, where: str, max_tokens: int) -> str | None:
    """The answer text is no longer than max_tokens allows; returns the (short string or null) finish_reason."""
    if len(content) > max_tokens * MAX_CHARS_PER_TOKEN:
        raise _fault("answer text is longer than max_tokens allows", where,
                     f"{len(content)} chars", f"<= {max_tokens * MAX_CHARS_PER_TOKEN} chars")
    finish = choice.get("finish_reason")
    if finish is not None and (not isinstance(finish, str) or len(finish) > 64):
        raise _fault("finish_reason is not a short string", "choices[0].finish_reason", finish, "null or a string")
    return finish


def validate_answer(answer: Any, request: dict[str, Any]) -> ProviderAnswer:
    """Check a chat-completion answer against the request that asked for it; raise ProviderFault.

    Types, ranges (finite logprobs in [-1e5, 0]) and lengths capped to what was asked: at most
    `max_tokens` logprob entries, at most `top_logprobs` alternatives each, text no longer than
    max_tokens * 64 characters. Logprobs are read only when they were requested."""
    max_tokens = max(1, _bounded_int(request, "max_tokens", 4096))
    wanted_top = _bounded_int(request, "top_logprobs", 0)
    choice = _first_choice(answer, request, "a chat completion object")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _fault("answer has no message content", "choices[0].message.content", content, "a string")
    finish = _check_text_and_finish(choice, content, "choices[0].message.content", max_tokens)
    entries: list[dict[str, Any]] | None = None
    lp = choice.get("logprobs")
    if request.get("logprobs") and lp is not None:
        if not isinstance(lp, dict):
            raise _fault("logprobs is not an object", "choices[0].logprobs", lp, '{"content": [...]}')
        raw_entries = lp.get("content")
        if raw_entries is not None:
            if not isinstance(raw_entries, list):
                raise _fault("logprobs.content is not a list", "choices[0].logprobs.content", raw_entries, "a list")
            if len(raw_entries) > max_tokens:
                raise _fault("more logprob entries than max_tokens", "choices[0].logprobs.content",
                             f"{len(raw_entries)} entries", f"<= {max_tokens}")
            entries = []
            for i, raw in enumerate(raw_entries):
                where = f"choices[0].logprobs.content[{i}]"
                entry = _check_token(raw, where)
                top = raw.get("top_logprobs")
                if top is None:
                    top = []
                if not isinstance(top, list):
                    raise _fault("top_logprobs is not a list", f"{where}.top_logprobs", top, "a list")
                if len(top) > wanted_top:
                    raise _fault("more top_logprobs than asked", f"{where}.top_logprobs", f"{len(top)} entries",
                                 f"<= {wanted_top}")
                entry["top_logprobs"] = [_check_token(alt, f"{where}.top_logprobs[{j}]") for j, alt in enumerate(top)]
                entries.append(entry)
    return ProviderAnswer(content, entries, finish)


def validate_completion(answer: Any, request: dict[str, Any]) -> ProviderAnswer:
    """Check a legacy `/v1/completions` answer against its request; raise ProviderFault.

    Same limits as `validate_answer`. `choices[0].text` is the content; the legacy logprobs
    (`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob}, read only when `logprobs`
    was requested) are returned in the chat shape ({"token", "bytes": None, "logprob",
    "top_logprobs": [...]}) so that the rest of the audit maps them the same way. A `null`
    token logprob (the first prompt token of an echo) is a fault: the audit never asks for echo."""
    max_tokens = max(1, _bounded_int(request, "max_tokens", 16))
    wanted_top = _bounded_int(request, "logprobs", 0)
    choice = _first_choice(answer, request, "a completion object")
    content = choice.get("text")
    if not isinstance(content, str):
        raise _fault("answer has no text", "choices[0].text", content, "a string")
    finish = _check_text_and_finish(choice, content, "choices[0].text", max_tokens)
    lp = choice.get("logprobs")
    if not request.get("logprobs") or lp is None:
        return ProviderAnswer(content, None, finish)
    if not isinstance(lp, dict):
        raise _fault("logprobs is not an object", "choices[0].logprobs", lp, '{"tokens", "token_logprobs", ...}')
    tokens, values, tops = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise _fault("logprobs.tokens and token_logprobs are not lists of one length", "choices[0].logprobs.tokens",
                     f"{type(tokens).__name__}/{type(values).__name__}", "two lists of equal length")
    if len(tokens) > max_tokens:
        raise _fault("more logprob entries than max_tokens", "choices[0].logprobs.tokens", f"{len(tokens)} entries",
                     f"<= {max_tokens}")
    if tops is not None and (not isinstance(tops, list) or len(tops) != len(tokens)):
        raise _fault("logprobs.top_logprobs does not match tokens", "choices[0].logprobs.top_logprobs",
                     f"{type(tops).__name__}", f"null or a list of {len(tokens)}")
    entries: list[dict[str, Any]] = []
    for i, (tok, val) in enumerate(zip(tokens, values, strict=True)):
        where = f"choices[0].logprobs.tokens[{i}]"
        entry = _check_token({"token": tok, "logprob": val}, where)
        top = (tops[i] if tops is not None else None) or {}
        if not isinstance(top, dict):
            raise _fault("top_logprobs entry is not an object", f"choices[0].logprobs.top_logprobs[{i}]", top,
                         "{token: logprob}")
        if len(top) > wanted_top:
            raise _fault("more top_logprobs than asked", f"choices[0].logprobs.top_logprobs[{i}]",
                         f"{len(top)} entries", f"<= {wanted_top}")
        entry["top_logprobs"] = [_check_token({"token": k, "logprob": v}, f"choices[0].logprobs.top_logprobs[{i}]")
                                 for k, v in top.items()]
        entries.append(entry)
    return ProviderAnswer(content, entries, finish)


def validate_for(endpoint: str, answer: Any, request: dict[str, Any]) -> ProviderAnswer:
    """`validate_answer` for chat, `validate_completion` for the legacy completions endpoint."""
    return validate_completion(answer, request) if endpoint == "completions" else validate_answer(answer, request)
