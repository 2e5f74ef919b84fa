"""One way for tests to talk to an ASGI app in-process: a real `httpx.Client`.

Starlette's `TestClient` speaks whichever HTTP client is installed: since Starlette 1.10 that is
`httpx2` when present (the current `openai` and `huggingface_hub` pull it in), so an `httpx.Timeout`
or transport handed to a `TestClient`, or a `TestClient` handed to specguard's httpx-based client,
raises `TypeError: Invalid timeout …`. This client is plain `httpx` whatever else is installed: its
transport runs the app with `httpx.ASGITransport` inside a fresh blocking portal per request (as
`TestClient` does), so it works from any thread, with or without a running event loop.

    client = app_client(create_app(...))
    client.get("/health").json()
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread
import httpx

BASE_URL = "http://testserver"


class _InProcessTransport(httpx.BaseTransport):
    """A sync httpx transport that calls the ASGI app in-process; the body is read in full."""

    def __init__(self, app: Any, *, raise_app_exceptions: bool, client: tuple[str, int]) -> None:
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions, client=client)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def call() -> httpx.Response:
            forwarded = httpx.Request(request.method, request.url, headers=request.headers, content=body,
                                      extensions=request.extensions)
            response = await self._asgi.handle_async_request(forwarded)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content,
                                  extensions=response.extensions)

        with anyio.from_thread.start_blocking_portal() as portal:
            return portal.call(call)


def app_client(app: Any, *, raise_server_exceptions: bool = True, base_url: str = BASE_URL,
               client_address: tuple[str, int] = ("127.0.0.1", 50000), **kwargs: Any) -> httpx.Client:
    """An `httpx.Client` bound to `app`; `raise_server_exceptions` as in Starlette's TestClient."""
    transport = _InProcessTransport(app, raise_app_exceptions=raise_server_exceptions, client=client_address)
    return httpx.Client(transport=transport, base_url=base_url, **kwargs)
