"""A robust client for OpenAI-compatible chat endpoints, with a raw append-only log.

Every attempt is appended to `raw.jsonl` as soon as its answer (or failure) arrives:
{"key", "attempt", "time", "request", "status", "retry_after", "body" | "error"}. The request
body is logged; headers (and so the API key, read from an environment variable) never are.
Retries: 429, 5xx, timeouts, connection errors and unparseable bodies, with exponential
backoff that honours Retry-After (capped). A request key is the digest of the canonical
request body, so a resumed audit reuses logged answers instead of re-querying.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ..canonical import json_digest
from . import AuditUsageError

log = logging.getLogger("specguard.audit.client")
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


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
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted write
        if not isinstance(rec, dict) or rec.get("status") != 200 or not isinstance(rec.get("body"), str):
            continue
        try:
            parsed = json.loads(rec["body"])
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and isinstance(rec.get("key"), str):
            done[rec["key"]] = parsed
    return done


class ProviderClient:
    """POSTs chat completions with retries; appends every attempt to the raw log."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        log_path: Path,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise AuditUsageError("API key environment variable is not set", field="api_key_env", got=api_key_env)
            headers["Authorization"] = f"Bearer {key}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.log_path = log_path
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self.cache = load_raw_log(log_path)
        self.stats = {"attempts": 0, "retries": 0, "failures": 0, "reused": 0, "http_errors": {}}

    def close(self) -> None:
        self._http.close()

    def _append(self, record: dict[str, Any]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(self.max_backoff, float(retry_after)))
            except ValueError:
                pass  # an HTTP-date Retry-After: keep the exponential delay
        self.sleep(delay)

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
                resp = self._http.post(self.url, json=body)
                rec["status"] = resp.status_code
                rec["body"] = resp.text
                retry_after = resp.headers.get("retry-after")
                rec["retry_after"] = retry_after
            except httpx.HTTPError as exc:
                rec["status"] = None
                rec["error"] = f"{type(exc).__name__}: {exc}"
            self._append(rec)
            status = rec["status"]
            if status is not None:
                errs = self.stats["http_errors"]
                if status != 200:
                    errs[str(status)] = errs.get(str(status), 0) + 1
            if status == 200:
                try:
                    parsed = json.loads(rec["body"])
                except json.JSONDecodeError:
                    parsed = None
                    errs = self.stats["http_errors"]
                    errs["malformed"] = errs.get("malformed", 0) + 1
                if isinstance(parsed, dict):
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
