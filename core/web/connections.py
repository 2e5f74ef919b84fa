"""Connection admission for every specguard server (serve, verifier, draft-serve, simulator).

uvicorn bounds neither how many connections it holds nor how long a client may take to send its
request head, so one client holding ~1000 half-sent requests exhausted the process's descriptors
and every new connection, `/health` included, was reset. `ConnectionGuard` sits in uvicorn's
HTTP protocol (`guarded_protocol`, a subclass of the protocol uvicorn would use) and enforces,
before any byte reaches the app (so before the API key is checked):

- a per-client cap: at most `max_per_client` open connections from one address (an IPv6 /64
  counts as one address; named proxies are exempt). The next one is answered 429 and closed;
- a connection limit: at most `max_connections` open at once. When full, the connection that has
  waited longest for a request head (half-open or idle keep-alive) is closed to make room; when
  every connection is busy with a request, the new one is answered 503 and closed;
- a header timeout: a request head must be complete `header_timeout` seconds after the
  connection started waiting for it (connect, or the end of the previous response), and at most
  `max_head_bytes` long (431);
- an idle timeout: a request whose body is still arriving is closed after `idle_timeout` seconds
  without a byte (unless the server itself paused reading).

Forwarded headers (`X-Forwarded-For`) are trusted only from the proxies the operator names
(`trusted_proxies`); by default the TCP peer is the client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

log = logging.getLogger("specguard.web.connections")

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_PER_CLIENT = 64
DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
#: descriptors a server needs besides its client connections (model files, logs, databases, threads)
RESERVED_DESCRIPTORS = 128
#: how long a connection closed with an answer keeps draining what its client still sends
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection limits of one server process (see the module docstring)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    trusted_proxies: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        checks = (("max_connections", self.max_connections, 1), ("max_per_client", self.max_per_client, 1),
                  ("header_timeout", self.header_timeout, 0.1), ("idle_timeout", self.idle_timeout, 0.1),
                  ("max_head_bytes", self.max_head_bytes, 1024))
        for name, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
                raise UsageError(f"{name} must be a number >= {low}", field=name, got=value, expected=f">= {low}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise UsageError("a trusted proxy must be an IP address or network", field="trusted_proxies",
                                 got=proxy, expected="e.g. 10.0.0.5 or 10.0.0.0/24") from exc

    def is_trusted_proxy(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """uvicorn's proxy settings: forwarded headers only from the named proxies, else never."""
        if not self.trusted_proxies:
            return {"proxy_headers": False}
        return {"proxy_headers": True, "forwarded_allow_ips": list(self.trusted_proxies)}


def client_key(peer: Any) -> str:
    """The address one client's connections are counted under (IPv6: its /64)."""
    host = peer[0] if isinstance(peer, tuple | list) and peer else str(peer)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _answer(status: int, reason: str, code: str, message: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "rate_limit_error" if status == 429 else
                                 "invalid_request_error", "param": None, "code": code}}).encode()
    extra = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ConnectionGuard:
    """Open connections of one server: the total, per client, and those waiting for a request head
    (oldest first: the ones closed when the server is full)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_client: dict[str, int] = {}
        self.waiting: OrderedDict[Any, None] = OrderedDict()
        self.counters = {"refused_client": 0, "refused_full": 0, "evicted": 0, "head_timeouts": 0,
                         "idle_timeouts": 0, "head_too_large": 0}

    def admit(self, conn: Any, client: str, trusted: bool) -> bytes | None:
        """Count `conn` in, or return the answer that refuses it."""
        lim = self.limits
        if not trusted and self.per_client.get(client, 0) >= lim.max_per_client:
            self.counters["refused_client"] += 1
            log.warning("refused a connection from %s: it already holds %d (--max-connections-per-client)",
                        client, lim.max_per_client)
            return _answer(429, "Too Many Requests", "too_many_connections",
                           f"this client already holds {lim.max_per_client} connections, the most one client may "
                           "hold here; reuse them or close some", retry_after=1)
        if self.total >= lim.max_connections:
            if not self.waiting:
                self.counters["refused_full"] += 1
                log.warning("refused a connection: %d connections, all busy (--max-connections)", self.total)
                return _answer(503, "Service Unavailable", "server_full",
                               f"the server holds {lim.max_connections} connections, all busy; retry shortly",
                               retry_after=1)
            oldest = next(iter(self.waiting))
            self.counters["evicted"] += 1
            oldest.guard_close()
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def release(self, conn: Any, client: str) -> None:
        self.waiting.pop(conn, None)
        self.total -= 1
        left = self.per_client.get(client, 1) - 1
        if left > 0:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)


def guarded_protocol(base: type, guard: ConnectionGuard) -> type:
    """A subclass of uvicorn's HTTP protocol class `base` that `guard` admits and times."""
    limits = guard.limits

    class GuardedHTTPProtocol(base):  # type: ignore[misc, valid-type]
        _guard_state = "new"  # new | refused | open | draining | closed
        _guard_waiting = False
        _guard_timer: asyncio.TimerHandle | None = None
        _guard_client = ""
        _guard_since = 0.0
        _guard_last_data = 0.0
        _guard_head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            self._guard_client = client_key(transport.get_extra_info("peername"))
            trusted = limits.is_trusted_proxy(self._guard_client)
            refusal = guard.admit(self, self._guard_client, trusted)
            if refusal is not None:
                self._guard_state = "refused"
                transport.write(refusal)
                transport.close()
                return
            self._guard_state = "open"
            super().connection_made(transport)
            self._guard_sync()

        def data_received(self, data: bytes) -> None:
            if self._guard_state != "open":
                return  # refused or draining: dropped
            self._guard_last_data = self.loop.time()
            if self._guard_waiting:
                self._guard_head_bytes += len(data)
            super().data_received(data)
            self._guard_sync()
            if self._guard_waiting and self._guard_head_bytes > limits.max_head_bytes \
                    and not self.transport.is_closing():
                guard.counters["head_too_large"] += 1
                self.guard_close(_answer(431, "Request Header Fields Too Large", "header_too_large",
                                         f"the request head must be at most {limits.max_head_bytes} bytes"))

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._guard_state == "open":
                self._guard_sync()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._guard_state == "refused":
                return
            self._guard_release()
            super().connection_lost(exc)

        def eof_received(self) -> Any:
            if self._guard_state == "draining":
                self._guard_drop()
                return None
            return super().eof_received()

        # -- bookkeeping -------------------------------------------------------------------------

        def _guard_release(self) -> None:
            if self._guard_state in ("open", "draining"):
                self._guard_state = "closed"
                guard.release(self, self._guard_client)
            if self._guard_timer is not None:
                self._guard_timer.cancel()
                self._guard_timer = None

        def _guard_drop(self) -> None:
            self._guard_release()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def guard_close(self, answer: bytes | None = None) -> None:
            """Close this connection (timed out, too large, or evicted to make room). With an
            `answer`: send it, half-close, and drop what the client still sends for a moment, so
            the answer is read rather than lost to a reset; the connection stays counted meanwhile."""
            if answer is None or self.transport is None or not self.transport.can_write_eof():
                self._guard_drop()
                return
            self.transport.write(answer)
            self.transport.write_eof()
            self._guard_state, self._guard_waiting = "draining", False
            guard.waiting.pop(self, None)
            if self._guard_timer is not None:
                self._guard_timer.cancel()
            self._guard_timer = self.loop.call_later(LINGER_SECONDS, self._guard_drop)

        def _guard_sync(self) -> None:
            """Follow the connection's state: waiting for a request head, or serving a request."""
            cycle = getattr(self, "cycle", None)
            # answered and its body all in (a body still arriving after an early answer, a 401 say, is
            # body, not the next request's head: the idle timeout covers it)
            waiting = cycle is None or (cycle.response_complete and not cycle.more_body)
            now = self.loop.time()
            if waiting and not self._guard_waiting:
                self._guard_waiting, self._guard_since, self._guard_head_bytes = True, now, 0
                guard.waiting[self] = None
                self._guard_arm(limits.header_timeout)
            elif not waiting and self._guard_waiting:
                self._guard_waiting = False
                guard.waiting.pop(self, None)
                self._guard_arm(limits.idle_timeout)

        def _guard_arm(self, delay: float) -> None:
            if self._guard_timer is not None:
                self._guard_timer.cancel()
            self._guard_timer = self.loop.call_later(max(0.05, delay), self._guard_check)

        def _guard_check(self) -> None:
            self._guard_timer = None
            if self._guard_state != "open" or self.transport.is_closing():
                return
            now = self.loop.time()
            if self._guard_waiting:
                left = self._guard_since + limits.header_timeout - now
                if left > 0:
                    self._guard_arm(left)
                    return
                guard.counters["head_timeouts"] += 1
                self.guard_close(_answer(408, "Request Timeout", "header_timeout",
                                         f"the request head was not complete within {limits.header_timeout:g} s")
                                 if self._guard_head_bytes else None)
                return
            cycle = getattr(self, "cycle", None)
            flow = getattr(self, "flow", None)
            if cycle is None or not cycle.more_body:
                return  # the body is in: what remains is the server's work
            if flow is not None and flow.read_paused:
                self._guard_last_data = now  # the server paused reading, not the client
            left = self._guard_last_data + limits.idle_timeout - now
            if left > 0:
                self._guard_arm(left)
                return
            guard.counters["idle_timeouts"] += 1
            self.guard_close()  # the app is inside the request: it sees a disconnect

    GuardedHTTPProtocol.__name__ = f"Guarded{base.__name__}"
    return GuardedHTTPProtocol


def raise_descriptor_limit(limits: ConnectionLimits) -> None:
    """Raise the soft descriptor limit toward the hard one; UsageError when `max_connections` cannot fit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limits.max_connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(hard, max(want, 4096))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        raise UsageError("--max-connections does not fit the process's descriptor limit", field="--max-connections",
                         got=limits.max_connections,
                         expected=f"<= {soft - RESERVED_DESCRIPTORS} (ulimit -n {soft}, {RESERVED_DESCRIPTORS} kept "
                                  "for the server itself)")
