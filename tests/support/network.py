"""Loopback ports for the servers tests start, and moto's S3 server on one."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager

from support.processes import venv_executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def moto_server(env: dict | None = None):
    """moto's S3 server on a free loopback port (with `env` added to its environment); yields its URL."""
    port = free_port()
    server = subprocess.Popen([venv_executable("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
