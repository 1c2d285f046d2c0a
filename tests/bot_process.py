"""`python -m bot` as a real subprocess whose output is read while it runs.

For start-up behaviour that only shows over time (retries, a wait before a fatal exit): the
test waits for a line with polling and a generous timeout, then signals the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

ROOT = Path(__file__).resolve().parent.parent


def bot_env(**env: str) -> dict[str, str]:
    """The test's environment without any DISCORD_/OLLAMA_ variable, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OLLAMA_"))}
    return {**clean, "PYTHONPATH": str(ROOT), "HISTORY_STORE": "memory://", **env}


class BotProcess:
    """``python -m bot [args]`` in ``cwd`` (no .env there), stdout and stderr kept apart.

    stdin is /dev/null unless given: like under Docker or systemd, no terminal is attached.
    """

    def __init__(
        self, cwd: Path, *args: str, stdin: int | IO[Any] = subprocess.DEVNULL, **env: str
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", *args],
            cwd=cwd,
            env=bot_env(**env),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self._out: list[str] = []
        self._err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._err)

    def err_lines(self, containing: str) -> list[str]:
        with self._lock:
            return [line for line in self._err if containing in line]

    def wait_until(self, predicate: Callable[[], bool], seconds: float = 30.0) -> bool:
        """Poll ``predicate`` until it holds, or the time is up, or the process has exited
        (then checked one last time, with all its output read)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.proc.poll() is not None:
                self._join_readers()
                return predicate()
            time.sleep(0.05)
        return predicate()

    def wait_for_lines(self, containing: str, count: int = 1, seconds: float = 30.0) -> bool:
        return self.wait_until(lambda: len(self.err_lines(containing)) >= count, seconds)

    def signal(self, sig: int = signal.SIGTERM, seconds: float = 20.0) -> int:
        """Send ``sig`` and return the exit code."""
        self.proc.send_signal(sig)
        return self.wait(seconds)

    def wait(self, seconds: float = 30.0) -> int:
        code = self.proc.wait(timeout=seconds)
        self._join_readers()
        return code

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def __repr__(self) -> str:  # shown by pytest when an assertion fails
        return f"BotProcess(stdout={self.stdout!r}, stderr={self.stderr!r})"
