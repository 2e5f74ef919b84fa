"""The one HTTP client factory for every outbound call specguard makes.

Remote drafters, verifier votes, log fetches and audited providers are all untrusted peers. An
httpx timeout bounds each socket operation, not the exchange: a server that sends its headers
one byte per second never trips a 2 s read timeout. Every client built here therefore carries

- explicit connect / read / write / pool timeouts;
- a hard wall-clock **deadline for the whole exchange** (connect, TLS, request, headers and
  body). It is enforced in the caller's own thread: the network backend clamps every socket
  operation's timeout to the time left before the deadline, and the body is read in chunks
  with the deadline checked between them. No helper thread is started, so none can outlive
  its request; a stalled peer costs at most the deadline;
- `trust_env=False` (no proxies, netrc or CA settings from the environment; pass `proxy=`
  to use one) and `follow_redirects=False` (a 3xx is an answer like any other);
- TLS verification always on for `https://`; the CAs trusted are the system's, or exactly the
  PEM file given as `cacert=` (a private CA). The CLI's `--cacert FILE` and a policy's `[tls]`
  table set them for a whole command (`trust_cas`, `cacert_for`): `SSL_CERT_FILE` and the other
  environment settings are ignored on purpose (`trust_env=False`);
- a cap on the response size (`max_bytes`), checked while streaming.

Failures are `OutboundError`s that carry the URL without user info or secret query values
(`redact_url`), so credentials never reach logs, error messages or certificates.

Not bounded: name resolution (`getaddrinfo` has no timeout; use IP addresses or /etc/hosts for
peers that must never stall a node).
"""

from __future__ import annotations

import contextvars
import json as _json
import math
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpcore
import httpx

from ..errors import DeadlineExceeded, OutboundError, ResponseTooLarge

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TrustedCAs",
    "cacert_for",
    "trust_cas",
    "trusted",
    "Response",
    "Timeouts",
    "client",
    "deadline",
    "failure_reason",
    "redact_url",
    "request",
]

#: default cap on a response body (a hostile peer cannot make a node buffer more)
DEFAULT_MAX_BYTES = 16 << 20
_SECRET_QUERY = ("key", "token", "secret", "password", "passwd", "pwd", "auth", "sig", "signature", "credential", "session")

# the absolute time.monotonic() deadline of the exchange running in this thread/context (None: none)
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("specguard_http_deadline", default=None)


def redact_url(url: str | httpx.URL) -> str:
    """`url` without user info, fragment or secret-looking query values (for logs, errors, certificates)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        query = ""
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            query = urlencode([(k, "REDACTED" if any(s in k.lower() for s in _SECRET_QUERY) else v) for k, v in pairs])
        return urlunsplit((parts.scheme, host, parts.path, query, ""))
    except ValueError:
        return "<unparseable url>"


@dataclass(frozen=True)
class Timeouts:
    """Per-operation timeouts (seconds) and the hard deadline for one whole exchange."""

    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 5.0
    total: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool", "total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value <= 86400):
                raise OutboundError("invalid timeout", field=f"timeouts.{name}", got=value, expected="a number in (0, 86400]")

    @classmethod
    def of(cls, total: float) -> Timeouts:
        """Every per-operation timeout equal to `total`, which is also the deadline."""
        return cls(connect=total, read=total, write=total, pool=total, total=total)

    def httpx(self, remaining: float | None = None) -> httpx.Timeout:
        cap = self.total if remaining is None else min(self.total, max(remaining, 1e-3))
        return httpx.Timeout(connect=min(self.connect, cap), read=min(self.read, cap),
                             write=min(self.write, cap), pool=min(self.pool, cap))


@dataclass(frozen=True)
class TrustedCAs:
    """Which CA file outbound TLS trusts: `default` for every URL, `per_url` for URLs under a prefix.

    None (the default) means the system CAs. A prefix is `scheme://host[:port][/path]`; the longest
    prefix that matches a URL wins over `default`.
    """

    default: str | None = None
    per_url: tuple[tuple[str, str], ...] = ()

    def for_url(self, url: str) -> str | None:
        """The CA file for `url`, or None for the system CAs."""
        best: tuple[int, str] | None = None
        for prefix, cafile in self.per_url:
            if _under_prefix(url, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), cafile)
        return best[1] if best is not None else self.default

    @classmethod
    def from_policy(cls, section: Mapping[str, Any], default: str | None = None,
                    base: str | None = None) -> TrustedCAs:
        """The policy's `[tls]` table: `cacert = "ca.pem"` and `[tls.cacerts]` `"https://host:port" = "ca.pem"`.

        Relative paths are relative to `base` (the policy file's folder). A command line `--cacert`
        (`default`) wins over the policy's `cacert`.
        """
        from pathlib import Path

        unknown = sorted(set(section) - {"cacert", "cacerts"})
        if unknown:
            raise OutboundError("unknown key in the policy's [tls] table", field=f"tls.{unknown[0]}", got=unknown[0],
                                expected="cacert or cacerts")

        def path(value: Any, name: str) -> str:
            if not isinstance(value, str) or not value:
                raise OutboundError("must be a path to a PEM file", field=name, got=value, expected="a file path")
            return str(Path(base) / value) if base and not Path(value).is_absolute() else value

        table = section.get("cacerts", {})
        if not isinstance(table, Mapping):
            raise OutboundError("must be a table of URL prefix -> CA file", field="tls.cacerts", got=table)
        per_url = []
        for prefix, cafile in table.items():
            scheme = urlsplit(str(prefix)).scheme
            if scheme not in ("http", "https"):
                raise OutboundError("must be an http(s) URL prefix", field="tls.cacerts", got=prefix,
                                    expected="https://host[:port][/path]")
            per_url.append((str(prefix).rstrip("/"), path(cafile, f"tls.cacerts.{prefix}")))
        policy_default = path(section["cacert"], "tls.cacert") if "cacert" in section else None
        return cls(default=default or policy_default, per_url=tuple(per_url))


def _origin(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default_port, parts.path.rstrip("/")


def _under_prefix(url: str, prefix: str) -> bool:
    try:
        scheme, host, port, path = _origin(url)
        p_scheme, p_host, p_port, p_path = _origin(prefix)
    except ValueError:
        return False
    return (scheme, host, port) == (p_scheme, p_host, p_port) and (path == p_path or path.startswith(p_path + "/")
                                                                 or not p_path)


# what this process trusts for outbound TLS (set once by a command: --cacert, the policy's [tls])
_trusted = TrustedCAs()


def trust_cas(cas: TrustedCAs) -> TrustedCAs:
    """Set the CAs every later outbound call of this process trusts; return the previous setting."""
    global _trusted
    previous, _trusted = _trusted, cas
    return previous


def trusted() -> TrustedCAs:
    """The CAs this process trusts for outbound TLS now."""
    return _trusted


def cacert_for(url: str) -> str | None:
    """The CA file this process trusts for `url` (None: the system CAs)."""
    return _trusted.for_url(url)


def _ssl_context(cacert: str) -> ssl.SSLContext:
    """Verification on, hostname checked, trusting exactly the CAs in `cacert`."""
    try:
        return ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as exc:
        raise OutboundError("cannot load the CA bundle", field="cacert", got=f"{cacert} ({exc})",
                            expected="a readable PEM file of CA certificates") from None


def _remaining() -> float | None:
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def _clamp(timeout: float | None, exc: type[Exception]) -> float | None:
    left = _remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise exc("deadline exceeded")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the exchange's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # a peer that reads one byte per second: bound the whole write, not each send()
        view = memoryview(buffer)
        step = 1 << 16
        while view:
            self._inner.write(bytes(view[:step]), _clamp(timeout, httpcore.WriteTimeout))
            view = view[step:]

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _clamp(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        left = _remaining()
        self._inner.sleep(seconds if left is None else max(0.0, min(seconds, left)))


def _install_deadline(transport: httpx.HTTPTransport) -> None:
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:  # an httpx/httpcore release that moved these: fail loudly, never run unbounded
        raise RuntimeError("specguard.web.http cannot install its deadline backend on this httpx version")
    if not isinstance(backend, _DeadlineBackend):
        pool._network_backend = _DeadlineBackend(backend)


def client(
    *,
    timeouts: Timeouts | None = None,
    verify: bool | str = True,
    cacert: str | None = None,
    proxy: str | None = None,
    headers: Mapping[str, str] | None = None,
    max_connections: int = 8,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An httpx client with specguard's rules: deadline-bounded sockets, no env proxies, no redirects.

    `cacert` is a PEM file of the CAs to trust (verification on); without it `verify` is True (system
    CAs), False (tests only) or a CA bundle path. Callers pass `cacert=cacert_for(url)` so the
    command's `--cacert` and the policy's per-URL CAs apply. `proxy` is the only way to
    use a proxy; `max_connections` bounds the connection pool. `transport` replaces the network
    (in-process test transports; the body deadline and size cap still apply in `request`).
    """
    timeouts = timeouts or Timeouts()
    if transport is None:
        verify_ctx: bool | ssl.SSLContext = verify
        if cacert is not None:
            verify_ctx = _ssl_context(cacert)
        elif isinstance(verify, str):
            verify_ctx = _ssl_context(verify)
        http_transport = httpx.HTTPTransport(
            verify=verify_ctx, trust_env=False, proxy=proxy,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        _install_deadline(http_transport)
        transport = http_transport
    # identity encoding: the byte cap then bounds what the peer sends, not only what it expands to
    http = httpx.Client(transport=transport, timeout=timeouts.httpx(), follow_redirects=False, trust_env=False,
                        headers={"Accept-Encoding": "identity", **dict(headers or {})})
    http._specguard_total = timeouts.total  # type: ignore[attr-defined]  # read by request()
    return http


@contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Every exchange in this block ends within `seconds` from now (nested deadlines keep the earliest)."""
    at = time.monotonic() + seconds
    outer = _DEADLINE.get()
    if outer is not None:
        at = min(at, outer)
    token = _DEADLINE.set(at)
    try:
        yield at
    finally:
        _DEADLINE.reset(token)


@dataclass(frozen=True)
class Response:
    """A fully read, size-capped answer."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str  # redacted

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ParseError-like OutboundError (naming the URL) when it is not."""
        try:
            return _json.loads(self.content)
        except (ValueError, RecursionError) as exc:  # ValueError also covers >4300-digit integers
            raise OutboundError("the answer is not JSON", field="body", got=self.text[:120], expected="JSON",
                                url=self.url) from exc


def _scrub(text: str, url: str) -> str:
    """An exception text without the raw URL's user info (httpx sometimes quotes the URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    if parts.username or parts.password:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        text = text.replace(userinfo + "@", "").replace(userinfo, "REDACTED")
    return text.replace(url, redact_url(url))


def request(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Response:
    """One exchange through `http` (built by `client`), read in full within the deadline.

    The deadline is the earliest of `timeout` seconds from now, an enclosing `deadline()` block
    and the client's own total. Raises DeadlineExceeded, ResponseTooLarge or OutboundError (all
    naming the redacted URL); any HTTP status, 3xx included, is returned as an answer.
    """
    shown = redact_url(url)
    limit = timeout if timeout is not None else (_client_total(http) or 86400.0)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit) or limit <= 0:
        raise OutboundError("invalid timeout", field="timeout", got=limit, expected="a positive number", url=shown)
    with deadline(limit) as at:
        try:
            req = http.build_request(method, url, json=json, params=params, headers=headers,
                                     timeout=_timeout_for(http, at))
            resp = http.send(req, stream=True, follow_redirects=False)
            try:
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResponseTooLarge("answer too large", field="body", got=f"> {max_bytes} bytes",
                                               expected=f"<= {max_bytes} bytes", url=shown)
                    if time.monotonic() > at:
                        raise DeadlineExceeded("Timeout: answer too slow", field="deadline", got=f"> {limit:g} s",
                                               expected=f"the whole exchange within {limit:g} s", url=shown)
                    chunks.append(chunk)
            finally:
                resp.close()
        except OutboundError:
            raise
        except httpx.HTTPError as exc:
            reason = _scrub(f"{type(exc).__name__}: {exc}", url)[:300]
            if isinstance(exc, httpx.TimeoutException) or time.monotonic() >= at:
                raise DeadlineExceeded("Timeout: no complete answer before the deadline", field="deadline", got=reason,
                                       expected=f"the whole exchange within {limit:g} s", url=shown) from None
            raise OutboundError("request failed", field="url", got=reason, url=shown) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            raise OutboundError("invalid request", field="url", got=_scrub(str(exc), url)[:200], url=shown) from None
    return Response(resp.status_code, resp.headers, b"".join(chunks), shown)


def failure_reason(exc: OutboundError) -> str:
    """An outbound failure as one `got=` value: its message and detail without the `field=`/`got=`
    labels, so an error that wraps it prints each label once."""
    return exc.message if exc.got is None else f"{exc.message}: {exc.got}"


def _client_total(http: httpx.Client) -> float | None:
    total = getattr(http, "_specguard_total", None)
    if total is not None:
        return float(total)
    t = http.timeout
    values = [v for v in (t.connect, t.read, t.write, t.pool) if v is not None]
    return max(values) if values else None


def _timeout_for(http: httpx.Client, at: float) -> httpx.Timeout:
    left = max(at - time.monotonic(), 1e-3)
    t = http.timeout

    def cap(v: float | None) -> float:
        return left if v is None else min(v, left)

    return httpx.Timeout(connect=cap(t.connect), read=cap(t.read), write=cap(t.write), pool=cap(t.pool))
