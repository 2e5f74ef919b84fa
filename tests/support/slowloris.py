"""Raw-socket hostile HTTP servers on 127.0.0.1 for outbound-deadline tests.

`RawServer(respond)` accepts connections on one background thread (one at a time, so the
process's thread count does not move while clients come and go), reads the request head and
body, records it, and calls `respond(conn, request, stop)` to answer however it likes.
Answers provided here:

- `drip(head, body, interval)`: sends the bytes one at a time, `interval` seconds apart (a
  slow-loris peer); stops as soon as the client hangs up;
- `answer(status, body, headers)`: a plain, immediate HTTP/1.1 answer (e.g. a 302 redirect).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Seen:
    """One request the server read: the request line, the headers (lower-case) and the body."""

    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RawServer:
    respond: Callable[[socket.socket, Seen, threading.Event], None]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"rawserver-{self.port}", daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    request = _read_request(conn)
                except OSError:
                    continue
                if request is None:
                    continue
                self.seen.append(request)
                try:
                    self.respond(conn, request, self._stop)
                except OSError:
                    pass  # the client hung up: that is what the tests want it to do


def _read_request(conn: socket.socket) -> Seen | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Seen(lines[0], headers, body)


def _hung_up(conn: socket.socket) -> bool:
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def drip(head: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n",
         body: bytes = b'{"tokens": [1]} ', interval: float = 1.0):
    """An answer sent one byte every `interval` seconds (headers included)."""

    def respond(conn: socket.socket, request: Seen, stop: threading.Event) -> None:
        for byte in head + body:
            if stop.is_set() or _hung_up(conn):
                return
            conn.sendall(bytes([byte]))
            stop.wait(interval)

    return respond


def answer(status: str = "200 OK", body: bytes = b"{}", headers: dict[str, str] | None = None):
    """An immediate answer."""

    def respond(conn: socket.socket, request: Seen, stop: threading.Event) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n".encode() + body)

    return respond
