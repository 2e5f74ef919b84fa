"""Raw-socket hostile HTTP servers on 127.0.0.1 for outbound-deadline tests.

`RawServer(respond)` accepts connections on one background thread (one at a time, so the
process's thread count does not move while clients come and go), reads the request head and
body, records it, and calls `respond(conn, request, stop)` to answer however it likes.
Answers provided here:

- `drip(head, body, interval)`: sends the bytes one at a time, `interval` seconds apart (a
  slow-loris peer); stops as soon as the client hangs up;
- `answer(status, body, headers)`: a plain, immediate HTTP/1.1 answer (e.g. a 302 redirect).

And the other direction, slow clients against our own servers: `half_open(port, source)` opens a
connection from a chosen loopback source address (127.0.0.0/8 is all loopback on Linux, so one
test can be many clients) and sends part of a request head; `answered(sockets, n, timeout)` waits
until the server has answered or closed `n` of them.
"""

from __future__ import annotations

import select
import socket
import ssl
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
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server-side context

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
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
            if self.tls is not None:
                try:
                    conn.settimeout(2.0)
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:  # the client refused our certificate
                    conn.close()
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
    if isinstance(conn, ssl.SSLSocket):
        return False  # MSG_PEEK is not available on TLS sockets; sendall fails once the client is gone
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


def self_signed_tls(directory) -> tuple[ssl.SSLContext, str]:
    """(server context, CA bundle path) for 127.0.0.1: a throwaway CA and a server certificate."""
    import datetime
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "specguard test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(ca_path)


PARTIAL_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"


def half_open(port: int, source: str = "127.0.0.1", data: bytes = PARTIAL_HEAD) -> socket.socket:
    """A connection from `source` to 127.0.0.1:`port` that sent `data` (a partial head) and then waits."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    if data:
        sock.sendall(data)
    return sock


def answered(sockets: list[socket.socket], n: int, timeout: float = 120.0) -> dict[socket.socket, bytes]:
    """Wait (at most `timeout` s) until the server answered or closed at least `n` of `sockets`;
    returns what each of those received before the server closed it (b"" for a bare close)."""
    import time

    done: dict[socket.socket, bytes] = {}
    pending = {s: b"" for s in sockets}
    deadline = time.monotonic() + timeout
    while len(done) < n and pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending), [], [], 0.5)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:  # reset: closed by the server
                chunk = b""
            if chunk:
                pending[sock] += chunk
            else:
                done[sock] = pending.pop(sock)
    return done
