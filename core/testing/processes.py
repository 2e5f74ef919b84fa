"""Start servers as subprocesses for tests and bench scripts, and stop them.

    port = free_port()
    srv = start_process(specguard_cmd("serve", "--model", str(tiny_dir), "--port", str(port)), port)
    try: ... httpx.get(srv.url + "/health") ...
    finally: srv.stop()

Every process binds 127.0.0.1, is waited for on its health path, and is stopped by PID (its
own process group) so a run starts and ends with nothing running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def specguard_cmd(*args: str) -> list[str]:
    """The argv that runs the specguard CLI with this interpreter."""
    return [sys.executable, "-m", "specguard", *args]


@dataclass
class ServerHandle:
    """A running subprocess serving HTTP on 127.0.0.1:port, in its own process group."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, then SIGKILL after `timeout`; returns the exit status."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def kill9(self) -> int | None:
        """SIGKILL the process (and its group) at once, as a crash would."""
        self._signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode


def start_process(args: list[str], port: int, env: dict[str, str] | None = None, health_path: str = "/health",
                  timeout: float = 120.0) -> ServerHandle:
    """Start `args` (it must listen on 127.0.0.1:`port`) and wait until `health_path` answers 200.

    `env` is added to the current environment. Raises RuntimeError with the process output if it
    exits early or is not healthy within `timeout` seconds (and then kills it).
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    fd, name = tempfile.mkstemp(prefix="specguard-server-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    handle = ServerHandle(proc, port, log_path, list(args))
    deadline = time.monotonic() + timeout
    url = handle.url + health_path
    while time.monotonic() < deadline:
        if not handle.alive():
            raise RuntimeError(f"{args!r} exited with {proc.returncode} before it was healthy:\n{handle.output()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop(timeout=5)
    raise RuntimeError(f"{args!r} not healthy at {url} within {timeout} s:\n{handle.output()}")
