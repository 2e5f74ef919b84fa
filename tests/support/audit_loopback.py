"""An in-thread uvicorn server on 127.0.0.1 for the sampled / multi-provider audit tests.

Cheaper than a subprocess (no second interpreter, no second model load): the simulated provider
app serves an already loaded model. Started and stopped by the test that needs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from support.servers import free_port
from support.tls import PrivateCA


@contextmanager
def loopback(app, tls: PrivateCA | None = None) -> Iterator[str]:
    """Serve `app` on a free loopback port (over TLS with `tls`'s server certificate); yields its `/v1` base URL."""
    import uvicorn

    port = free_port()
    certs = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls is not None else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           **certs))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("loopback server did not start")
        time.sleep(0.05)
    try:
        yield f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
