"""Per-client token buckets: how a verifier node bounds what one client can make it re-derive.

Each client address has a bucket of `burst` tokens refilled at `rate` tokens per second; a
request takes one token (or `cost` tokens: the work budget counts model tokens to re-derive) or is
refused (HTTP 429). At most `max_clients` buckets are kept (the least recently used is dropped),
so the table itself cannot grow without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..errors import RequestError


class RateLimitedError(RequestError):
    """A client sent more verify requests than its rate allows (HTTP 429)."""

    http_status = 429
    retry_after: int = 1


class TokenBuckets:
    """A token bucket per client key. `rate` <= 0 disables limiting."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(rate) or rate < 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate >= 0, burst >= 1 and max_clients >= 1 are required")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, client: str, cost: float = 1.0, what: str = "verify requests") -> None:
        """Take `cost` tokens (at most `burst`) for `client`, or raise RateLimitedError saying when to retry."""
        if not self.enabled:
            return
        cost = min(float(self.burst), max(0.0, float(cost)))
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < cost:
                self._buckets[client] = (tokens, now)
                retry = (cost - tokens) / self.rate
                exc = RateLimitedError(
                    f"too many {what} from this client: at most {self.burst} at once and {self.rate:g} per "
                    f"second; retry in {retry:.1f} s", field="client", got=client,
                    expected=f"<= {self.rate:g}/s (burst {self.burst})")
                exc.retry_after = max(1, math.ceil(retry))
                raise exc
            self._buckets[client] = (tokens - cost, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)

    def retry_after(self, client: str) -> int:
        """Whole seconds until `client` has a token again (for the Retry-After header)."""
        with self._lock:
            tokens, _ = self._buckets.get(client, (float(self.burst), 0.0))
        return max(1, math.ceil((1.0 - tokens) / self.rate)) if self.enabled else 0
