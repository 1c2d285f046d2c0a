"""A real redis-server for the tests: on a free port of 127.0.0.1, in its own directory, with
the append-only file on and fsynced on every write (no snapshots), so that what it acknowledged
survives ``kill -9``. Not skipped when redis-server is missing: CI installs it (.ci/run)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int) -> bool:
    """True when something on ``port`` answers PING like Redis (NOAUTH counts: it is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """``start()``, ``kill()`` (SIGKILL: no shutdown, no final fsync) and ``stop()``; started
    again on the same directory and port it reloads its append-only file."""

    def __init__(self, directory: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed, and the Redis history store is tested against "
                "a real one: apt-get install redis-server (.ci/run does this)",
                pytrace=False,
            )
        self.binary = binary
        self.directory = directory
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--bind", "127.0.0.1", "--port", str(self.port)),
                *("--dir", str(self.directory), "--logfile", str(log)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                *("--daemonize", "no", "--protected-mode", "no"),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def started_redis(directory: Path, *extra: str) -> RedisServer:
    """A running server; another free port is tried if the first was taken meanwhile."""
    for attempt in range(3):
        server = RedisServer(directory, *extra)
        try:
            server.start()
        except RuntimeError:
            if attempt == 2:
                raise
        else:
            return server
    raise AssertionError("unreachable")
