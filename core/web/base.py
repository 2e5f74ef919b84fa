"""One FastAPI base for every specguard server: the serving node, verifier nodes, the drafting
server and the simulated audit provider.

`create_base_app` gives each app the same
- error handlers: every failure is OpenAI's `{"error": {"message", "type", "param", "code"}}`;
- body limit, enforced on the bytes actually received (a chunked body with no Content-Length,
  or one that lies about its length, is cut off at the limit and answered 413);
- optional bearer authentication (`Authorization: Bearer KEY`, compared in constant time against
  every configured key), with a short list of public routes that stay open;
- metrics hook: a `metrics` object whose `requests_rejected` counter counts every refusal.

`server_options` / `ServerSecurity` add the same command-line options to every server command:
`--api-key`, `--api-keys FILE` (or `SPECGUARD_API_KEY`), `--ssl-certfile`, `--ssl-keyfile`, and the
connection limits of `specguard.web.connections` (`--max-connections`,
`--max-connections-per-client`, `--header-timeout`, `--idle-timeout`, `--trusted-proxy`);
`run_uvicorn` starts uvicorn with them, behind the connection guard, with forwarded headers
trusted only from the named proxies and secrets in query strings redacted from the access log.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from ..errors import UsageError
from .connections import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_CLIENT,
    ConnectionGuard,
    ConnectionLimits,
    guarded_protocol,
    raise_descriptor_limit,
)
from .errors import error_response, install_handlers

log = logging.getLogger("specguard.server")

#: default request-body limit of every app (the serving node's; apps may pass their own)
MAX_BODY_BYTES = 16 * 1024 * 1024
API_KEY_ENV = "SPECGUARD_API_KEY"
#: routes that never need a key: liveness and the public transparency log
PUBLIC_PATHS: tuple[str, ...] = ("/health",)
PUBLIC_PREFIXES: tuple[str, ...] = ("/specguard/v1/log/",)


class BodyTooLargeError(HTTPException):
    """The request body passed the limit while it was being received (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body must be at most {limit} bytes")
        self.limit = limit


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over `limit` bytes with 413.

    A declared Content-Length over the limit is refused before anything is read. Every body is
    also counted as it arrives: the receive channel raises BodyTooLargeError as soon as the
    running total passes the limit, so chunked bodies and bodies longer than their declared
    length are refused as well, without buffering more than the limit.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES, metrics: Any = None) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    def _rejected(self) -> None:
        if self.metrics is not None:
            self.metrics.requests_rejected.inc(reason="body_too_large")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = -1
                if size < 0 or size > self.limit:
                    self._rejected()
                    msg = (f"request body must be at most {self.limit} bytes "
                           f"(Content-Length {value.decode('latin-1')[:20]})")
                    await error_response(413, msg, None, "body_too_large")(scope, receive, send)
                    return
        received = 0
        limit = self.limit

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self._rejected()
                    raise BodyTooLargeError(limit)
            return message

        await self.app(scope, counted, send)


def parse_bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            raw = value.decode("latin-1").strip()
            scheme, _, token = raw.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def key_matches(token: str | None, keys: Iterable[str]) -> bool:
    """Constant-time check of `token` against every key (no early exit, so timing names no key)."""
    # compare fixed-length digests, so neither a key's length nor its prefix shows in the timing
    given = hashlib.sha256((token or "").encode("utf-8")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, hashlib.sha256(key.encode("utf-8")).digest())
    return found and bool(token)


class BearerAuth:
    """Pure ASGI middleware: every HTTP route but the public ones needs `Authorization: Bearer KEY`.

    A missing or wrong key is answered 401 in OpenAI's shape with `WWW-Authenticate: Bearer`.
    """

    def __init__(self, app: Any, keys: Iterable[str], public_paths: Iterable[str] = PUBLIC_PATHS,
                 public_prefixes: Iterable[str] = PUBLIC_PREFIXES, metrics: Any = None) -> None:
        self.app = app
        self.keys = tuple(keys)
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)
        self.metrics = metrics

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or any(path.startswith(p) for p in self.public_prefixes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        token = parse_bearer(scope.get("headers", []))
        if key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        if self.metrics is not None:
            self.metrics.requests_rejected.inc(reason="unauthorized")
        if token is None:
            msg, code = "this server needs an API key: send 'Authorization: Bearer <key>'", "missing_api_key"
        else:
            msg, code = "the API key given in 'Authorization: Bearer' is not valid here", "invalid_api_key"
        await error_response(401, msg, "Authorization", code,
                             headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def create_base_app(
    title: str,
    *,
    version: str | None = None,
    description: str = "",
    metrics: Any = None,
    body_limit: int = MAX_BODY_BYTES,
    api_keys: Iterable[str] = (),
    public_paths: Iterable[str] = PUBLIC_PATHS,
    public_prefixes: Iterable[str] = PUBLIC_PREFIXES,
) -> FastAPI:
    """A FastAPI app with specguard's error handlers, streamed body limit and optional bearer auth.

    `api_keys` empty means no authentication. Auth runs outside the body limit, so a client
    without a key is refused before its body is read.
    """
    kwargs: dict[str, Any] = {"title": title, "description": description}
    if version is not None:
        kwargs["version"] = version
    app = FastAPI(**kwargs)
    keys = tuple(api_keys)
    if any(not isinstance(k, str) or not k.strip() for k in keys):
        raise UsageError("an API key must be a non-empty string", field="api_keys", got=[type(k).__name__ for k in keys])
    app.state.auth_enabled = bool(keys)
    install_handlers(app, metrics)
    app.add_middleware(BodyLimit, limit=body_limit, metrics=metrics)
    if keys:  # added last = outermost
        app.add_middleware(BearerAuth, keys=keys, public_paths=public_paths, public_prefixes=public_prefixes,
                           metrics=metrics)
    return app


# --- command-line options shared by every server -----------------------------------------------


@dataclass(frozen=True)
class ServerSecurity:
    """API keys and TLS files of one server process."""

    api_keys: tuple[str, ...] = ()
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def uvicorn_kwargs(self) -> dict[str, Any]:
        if not self.tls:
            return {}
        return {"ssl_certfile": self.ssl_certfile, "ssl_keyfile": self.ssl_keyfile}


def _check_key(key: str, where: str) -> str:
    key = key.strip()
    if len(key) < 8 or any(c.isspace() for c in key) or not key.isprintable():
        raise UsageError("an API key must be at least 8 printable characters without spaces", field=where,
                         got=f"{len(key)} characters", expected=">= 8 printable, no whitespace")
    return key


def load_api_keys(api_key: str | None = None, api_keys_file: str | None = None,
                  env: dict[str, str] | None = None) -> tuple[str, ...]:
    """Keys from `--api-key`, `--api-keys FILE` (one per line, `#` comments) and `SPECGUARD_API_KEY`."""
    environ = os.environ if env is None else env
    keys: list[str] = []
    if api_key:
        keys.append(_check_key(api_key, "--api-key"))
    elif environ.get(API_KEY_ENV):
        keys.append(_check_key(environ[API_KEY_ENV], API_KEY_ENV))
    if api_keys_file:
        try:
            lines = Path(api_keys_file).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError("cannot read the API keys file", field="--api-keys", got=str(exc)[:200]) from exc
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_check_key(line, f"--api-keys line {n}"))
        if not keys:
            raise UsageError("the API keys file holds no key", field="--api-keys", got=api_keys_file)
    return tuple(dict.fromkeys(keys))


def server_security(api_key: str | None, api_keys_file: str | None, ssl_certfile: str | None,
                    ssl_keyfile: str | None) -> ServerSecurity:
    """Validate the shared server options into a ServerSecurity."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise UsageError("TLS needs both --ssl-certfile and --ssl-keyfile", field="--ssl-keyfile",
                         got={"certfile": ssl_certfile, "keyfile": ssl_keyfile})
    for name, path in (("--ssl-certfile", ssl_certfile), ("--ssl-keyfile", ssl_keyfile)):
        if path is not None and not Path(path).is_file():
            raise UsageError("TLS file not found", field=name, got=path)
    return ServerSecurity(load_api_keys(api_key, api_keys_file), ssl_certfile, ssl_keyfile)


LIMITS_META_KEY = "specguard.connection_limits"


def connection_limits(max_connections: int | None = None, max_per_client: int | None = None,
                      header_timeout: float | None = None, idle_timeout: float | None = None,
                      trusted_proxies: Iterable[str] = ()) -> ConnectionLimits:
    """ConnectionLimits from command-line values (None: the default)."""
    return ConnectionLimits(
        max_connections=DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections,
        max_per_client=DEFAULT_MAX_PER_CLIENT if max_per_client is None else max_per_client,
        header_timeout=DEFAULT_HEADER_TIMEOUT if header_timeout is None else header_timeout,
        idle_timeout=DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout,
        trusted_proxies=tuple(trusted_proxies))


_LIMIT_OPTIONS = ("max_connections", "max_per_client", "header_timeout", "idle_timeout", "trusted_proxies")


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Click options `--api-key`, `--api-keys`, `--ssl-certfile`, `--ssl-keyfile` and the connection
    limits (shared by every server). The limits go to `run_uvicorn` through the click context, so the
    command function does not take them."""
    import click

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in _LIMIT_OPTIONS}
        values["trusted_proxies"] = values["trusted_proxies"] or ()
        try:
            limits = connection_limits(**values)
        except UsageError as exc:
            raise click.UsageError(exc.summary()) from exc
        click.get_current_context().meta[LIMITS_META_KEY] = limits
        return fn(*args, **kwargs)

    options = [
        click.option("--api-key", "api_key", default=None,
                     help=f"Require 'Authorization: Bearer KEY' (or set {API_KEY_ENV}); /health and the "
                          "public log routes stay open."),
        click.option("--api-keys", "api_keys_file", default=None, type=click.Path(dir_okay=False),
                     help="File of accepted API keys, one per line."),
        click.option("--ssl-certfile", default=None, type=click.Path(dir_okay=False),
                     help="Serve HTTPS with this certificate (PEM)."),
        click.option("--ssl-keyfile", default=None, type=click.Path(dir_okay=False),
                     help="Private key of --ssl-certfile (PEM)."),
        click.option("--max-connections", "max_connections", type=int, default=None,
                     help=f"Open connections at most (default {DEFAULT_MAX_CONNECTIONS}); when full, the one "
                          "waiting longest for a request head is closed."),
        click.option("--max-connections-per-client", "max_per_client", type=int, default=None,
                     help=f"Open connections per client address (default {DEFAULT_MAX_PER_CLIENT}; an IPv6 /64 "
                          "is one client); more get 429."),
        click.option("--header-timeout", "header_timeout", type=float, default=None,
                     help=f"Seconds a client has to send a request head (default {DEFAULT_HEADER_TIMEOUT:g})."),
        click.option("--idle-timeout", "idle_timeout", type=float, default=None,
                     help=f"Seconds a request body may stall (default {DEFAULT_IDLE_TIMEOUT:g})."),
        click.option("--trusted-proxy", "trusted_proxies", multiple=True,
                     help="Address or network of a reverse proxy whose X-Forwarded-For is believed and whose "
                          "connections skip the per-client cap (repeatable; default: none)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def add_server_arguments(parser: Any) -> None:
    """The same options for an argparse parser (the standalone verifier); read them back with
    `limits_from_arguments`."""
    parser.add_argument("--api-key", default=None, help=f"require this bearer key (or set {API_KEY_ENV})")
    parser.add_argument("--api-keys", dest="api_keys_file", default=None, help="file of accepted API keys")
    parser.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", default=None, help="private key of --ssl-certfile (PEM)")
    parser.add_argument("--max-connections", type=int, default=None,
                        help=f"open connections at most (default {DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--max-connections-per-client", dest="max_per_client", type=int, default=None,
                        help=f"open connections per client address (default {DEFAULT_MAX_PER_CLIENT})")
    parser.add_argument("--header-timeout", type=float, default=None,
                        help=f"seconds to send a request head (default {DEFAULT_HEADER_TIMEOUT:g})")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help=f"seconds a request body may stall (default {DEFAULT_IDLE_TIMEOUT:g})")
    parser.add_argument("--trusted-proxy", dest="trusted_proxies", action="append", default=[],
                        help="reverse proxy whose X-Forwarded-For is believed (repeatable; default none)")


def limits_from_arguments(args: Any) -> ConnectionLimits:
    """The connection limits of parsed `add_server_arguments` options."""
    return connection_limits(args.max_connections, args.max_per_client, args.header_timeout, args.idle_timeout,
                             args.trusted_proxies)


#: query parameters whose values never reach a log line
_SECRET_QUERY = re.compile(r"(?i)([?&](?:[a-z0-9_.-]*(?:token|key|secret|password|auth)[a-z0-9_.-]*)=)[^&\s\"]*")


def redact_query(text: str) -> str:
    """`text` with the values of secret-looking query parameters (`token`, `api_key`, ...) redacted."""
    return _SECRET_QUERY.sub(r"\1<redacted>", text)


class RedactQuerySecrets(logging.Filter):
    """uvicorn's access log writes the request path with its query: secrets sent as `?token=` (old
    clients) must not land in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


def _current_limits() -> ConnectionLimits | None:
    try:
        import click
    except ImportError:  # pragma: no cover
        return None
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get(LIMITS_META_KEY)


def uvicorn_config_kwargs(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn settings for `limits`: the guarded HTTP protocol and the proxy-header trust."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return {"http": guarded_protocol(AutoHTTPProtocol, ConnectionGuard(limits)), **limits.uvicorn_kwargs()}


def run_uvicorn(app: Any, host: str, port: int, security: ServerSecurity | None = None,
                log_level: str = "warning", limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
    """Run `app` with uvicorn behind the connection guard, over TLS when the security options name a
    certificate. `limits` default: the command line's (`server_options`), else the defaults."""
    import uvicorn

    sec = security or ServerSecurity()
    limits = limits or _current_limits() or ConnectionLimits()
    if not sec.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s without --api-key: anyone who can reach it can use it", host)
    raise_descriptor_limit(limits)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuerySecrets) for f in access.filters):
        access.addFilter(RedactQuerySecrets())
    uvicorn.run(app, host=host, port=port, log_level=log_level, **sec.uvicorn_kwargs(),
                **uvicorn_config_kwargs(limits), **kwargs)
