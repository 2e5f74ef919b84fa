"""Server processes for bench scripts: a free port, the CLI argv, start-and-wait, stop by PID.

bench/ imports the package and these helpers, never tests/ (tests/architecture/test_bench_imports.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
class ServerProcess:
    """A subprocess serving HTTP on 127.0.0.1:port, in its own process group."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, then SIGKILL after `timeout`; returns the exit status."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                continue
        return self.proc.returncode


def start_process(args: list[str], port: int, env: dict[str, str] | None = None, health_path: str = "/health",
                  timeout: float = 120.0) -> ServerProcess:
    """Start `args` (listening on 127.0.0.1:`port`) and wait until `health_path` answers 200;
    RuntimeError with the process output if it exits or is not healthy within `timeout` seconds."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    fd, name = tempfile.mkstemp(prefix="specguard-bench-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    handle = ServerProcess(proc, port, Path(name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not handle.alive():
            raise RuntimeError(f"{args!r} exited with {proc.returncode} before it was healthy:\n{handle.output()}")
        try:
            if httpx.get(handle.url + health_path, timeout=2.0).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop(timeout=5)
    raise RuntimeError(f"{args!r} not healthy at {handle.url + health_path} within {timeout} s:\n{handle.output()}")


def completion_body(model: Any, request_obj: dict[str, Any], transcript: Any, served_name: str,
                    response_id: str = "cmpl-bench", created: int = 1_700_000_000) -> dict[str, Any]:
    """The body `specguard serve` sends for `transcript` (the server's own formatting code)."""
    from specguard.openai import format as fmt
    from specguard.openai import prompting

    req = prompting.parse_request(request_obj)
    logprobs, top_n, completion_lp = prompting.logprob_options(req)
    text_of = fmt.TokenText(model)
    if prompting.request_kind(req) == "chat":
        return fmt.chat_body(transcript, response_id=response_id, created=created, model=served_name,
                             logprobs=logprobs, top_n=top_n, text_of=text_of)
    return fmt.completion_body(transcript, response_id=response_id, created=created, model=served_name,
                               logprobs=completion_lp, text_of=text_of)
