"""The suite does not depend on which HTTP client Starlette or the SDKs bring (httpx or httpx2).

Starlette >= 1.10 builds its TestClient on `httpx2` when that package is installed, and the current
`openai`/`huggingface_hub` install it: handing an `httpx.Timeout` or transport to such a TestClient, or
a TestClient to specguard's httpx-based client, raises TypeError. In-process tests therefore use one
helper, `support.asgi.app_client`, which is a plain `httpx.Client` whatever else is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from support.asgi import app_client

from specguard.web import http as sg_http

TESTS = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"^\s*(from|import)\s+(fastapi|starlette)\.testclient\b", re.MULTILINE)


def _echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"got": await request.json(), "client": request.client.host if request.client else None}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    return app


def test_no_test_imports_starlettes_testclient() -> None:
    offenders = [str(p.relative_to(TESTS)) for p in TESTS.rglob("*.py") if FORBIDDEN.search(p.read_text("utf-8"))]
    assert offenders == [], (
        f"in-process tests use support.asgi.app_client, not Starlette's TestClient (httpx2-dependent): {offenders}"
    )


def test_app_client_is_plain_httpx_and_takes_httpx_timeouts() -> None:
    client = app_client(_echo_app())
    assert isinstance(client, httpx.Client)
    answer = client.post("/echo", json={"a": 1}, timeout=httpx.Timeout(5.0))
    assert answer.status_code == 200
    assert answer.json() == {"got": {"a": 1}, "client": "127.0.0.1"}


def test_specguards_client_runs_over_the_in_process_transport() -> None:
    """specguard.web.http.request sets per-request httpx.Timeouts: the case that broke under httpx2."""
    inner = app_client(_echo_app())
    http = sg_http.client(transport=inner._transport)
    answer = sg_http.request(http, "POST", "http://testserver/echo", json={"b": [1, 2]}, timeout=5.0)
    assert answer.status_code == 200 and answer.json()["got"] == {"b": [1, 2]}


def test_server_exceptions_raise_or_answer_500_as_asked() -> None:
    assert app_client(_echo_app(), raise_server_exceptions=False).get("/boom").status_code == 500
    try:
        app_client(_echo_app()).get("/boom")
    except RuntimeError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("an app exception must propagate when raise_server_exceptions is True")

